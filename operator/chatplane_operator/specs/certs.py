"""TLS builders: which certificates a ChatCluster needs, their Secrets or cert-manager
`Certificate`s, and how pods mount them (volumes, mounts, the CHATPLANE_*TLS* env).

Per region R of cluster C: one certificate per tier (`C-R-<tier>-tls`, CN = the tier's role,
SAN DNS = the role, the tier's Service DNS names, the pods' names behind the headless
Service, and `region.R` on im, its cross-region identity) and the client-facing one of the
gateways (`C-R-gateway-client-tls`, unless `tls.clientSecretName` names one). Once per
cluster: the CA (`C-ca`, created once, never rewritten) and the operator's client
certificate (`C-operator-tls`, CN `operator`). Every Secret is `kubernetes.io/tls` with
`tls.crt`, `tls.key` and `ca.crt`, the layout cert-manager writes, so pods mount the same
names in both modes.
"""

from __future__ import annotations

import base64
import dataclasses
import urllib.parse
from typing import Any

from chatplane_operator import api
from chatplane_operator.certificates import Issued, Wanted, split_names
from chatplane_operator.specs import naming

TLS_DIR = "/etc/chatplane/tls"
CERT_MANAGER_API = "cert-manager.io/v1"
CA_KEY = "ca.crt"


@dataclasses.dataclass(frozen=True)
class CertSpec:
    """One certificate the cluster needs, and the Secret it lives in."""

    secret_name: str
    wanted: Wanted
    region: api.Region | None  # None: cluster-wide (the operator's)
    role: str


def ca_secret_name(cluster: api.ChatCluster) -> str:
    return f"{cluster.name}-ca"


def tier_secret_name(cluster: api.ChatCluster, region: api.Region, tier: str) -> str:
    return f"{naming.tier_name(cluster, region, tier)}-tls"


def client_secret_name(cluster: api.ChatCluster, region: api.Region) -> str:
    return cluster.tls.client_secret_name or f"{naming.tier_name(cluster, region, 'gateway')}-client-tls"


def operator_secret_name(cluster: api.ChatCluster) -> str:
    return f"{cluster.name}-operator-tls"


def _service_names(host: str) -> list[str]:
    """`<svc>.<ns>.svc` and its `.cluster.local` form, bare `<svc>` and `<svc>.<ns>`."""
    svc, ns = host.split(".")[:2]
    return [svc, f"{svc}.{ns}", host, f"{host}.cluster.local"]


def tier_identity(cluster: api.ChatCluster, region: api.Region, tier: str) -> Wanted:
    host = naming.service_host(cluster, region, tier)
    names = [tier, *_service_names(host), f"*.{host}", f"*.{host}.cluster.local"]
    if tier == "im":
        names.append(f"region.{region.name}")  # its identity to peer regions
    return Wanted(tier, tuple(names))


def client_identity(cluster: api.ChatCluster, region: api.Region) -> Wanted:
    """What clients dial: the public Service, the pods' DNS names (the default advertised
    URL and TCP endpoint) and the hosts of advertiseURL and advertiseTCP (`$(POD_NAME)`
    becomes a wildcard; an IP address becomes an IP SAN when issued,
    certificates.split_names)."""
    public = f"{naming.gateway_public_name(cluster, region)}.{cluster.namespace}.svc"
    pods = naming.service_host(cluster, region, "gateway")
    names = [*_service_names(public), f"*.{pods}", f"*.{pods}.cluster.local"]
    advertised = [region.gateway.advertise_url,
                  f"tcp://{region.gateway.advertise_tcp}" if region.gateway.advertise_tcp else ""]
    for url in filter(None, advertised):
        host = urllib.parse.urlsplit(url).hostname or ""
        host = host.replace("$(pod_name)", "*")
        if host and host not in names:
            names.append(host)
    return Wanted(names[0], tuple(names))


def wanted_certs(cluster: api.ChatCluster) -> list[CertSpec]:
    """Every certificate the operator issues (or asks cert-manager for)."""
    if not cluster.tls.enabled:
        return []
    out = [CertSpec(operator_secret_name(cluster), Wanted("operator", ("operator",)), None,
                    "operator")]
    for region in cluster.regions:
        out += [CertSpec(tier_secret_name(cluster, region, tier),
                         tier_identity(cluster, region, tier), region, tier)
                for tier in api.TIERS]
        if not cluster.tls.client_secret_name:
            out.append(CertSpec(client_secret_name(cluster, region),
                                client_identity(cluster, region), region, "client"))
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build_ca_secret(cluster: api.ChatCluster, ca: Issued) -> dict[str, Any]:
    meta = naming.metadata(cluster, ca_secret_name(cluster), None, None)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "kubernetes.io/tls",
            "data": {"tls.crt": _b64(ca.cert), "tls.key": _b64(ca.key), CA_KEY: _b64(ca.cert)}}


def build_cert_secret(cluster: api.ChatCluster, spec: CertSpec, issued: Issued,
                      ca_cert: bytes) -> dict[str, Any]:
    meta = naming.metadata(cluster, spec.secret_name, spec.region, spec.role)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "kubernetes.io/tls",
            "data": {"tls.crt": _b64(issued.cert), "tls.key": _b64(issued.key),
                     CA_KEY: _b64(ca_cert)}}


def build_certificate(cluster: api.ChatCluster, spec: CertSpec) -> dict[str, Any]:
    """A cert-manager Certificate for `spec`, from `tls.issuerRef`; renewed by cert-manager
    a third of its lifetime before it expires, as the operator's own CA does."""
    issuer = cluster.tls.issuer
    assert issuer is not None
    hours = cluster.tls.lifetime_hours
    meta = naming.metadata(cluster, spec.secret_name, spec.region, spec.role)
    dns, ips = split_names(spec.wanted.dns_names)
    return {
        "apiVersion": CERT_MANAGER_API, "kind": "Certificate", "metadata": meta,
        "spec": {
            "secretName": spec.secret_name,
            "secretTemplate": {"labels": naming.labels(cluster, spec.region, spec.role)},
            "commonName": spec.wanted.common_name,
            "dnsNames": dns,
            **({"ipAddresses": ips} if ips else {}),
            "duration": f"{hours}h",
            "renewBefore": f"{max(1, hours // 3)}h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        },
    }


def build_certificates(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    """cert-manager mode: the region's Certificates (the operator's own goes with the first
    region); none without an issuer."""
    if cluster.tls.issuer is None or not cluster.tls.enabled:
        return []
    first = cluster.regions[0].name if cluster.regions else ""
    return [build_certificate(cluster, s) for s in wanted_certs(cluster)
            if (s.region is not None and s.region.name == region.name)
            or (s.region is None and region.name == first)]


# -- pods --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mount:
    """A Secret mounted read-only at TLS_DIR/<dir>, and env var -> key in it."""

    volume: str
    secret: str
    env: dict[str, str]


def _files(name: str, files: api.TlsFiles, prefix: str) -> Mount:
    env = {f"{prefix}_CA": files.ca_key}
    if files.cert_key and files.key_key:
        env.update({f"{prefix}_CERT": files.cert_key, f"{prefix}_KEY": files.key_key})
    return Mount(name, files.secret_name, env)


def mounts(cluster: api.ChatCluster, region: api.Region, tier: str) -> list[Mount]:
    """The TLS Secrets a tier's container mounts."""
    out: list[Mount] = []
    tls = cluster.tls
    if tls.enabled:
        out.append(Mount("tls-grpc", tier_secret_name(cluster, region, tier), {
            "CHATPLANE_GRPC_TLS_CA": CA_KEY, "CHATPLANE_GRPC_TLS_CERT": "tls.crt",
            "CHATPLANE_GRPC_TLS_KEY": "tls.key"}))
        if tls.peer_ca is not None and tier == "im":
            out.append(Mount("tls-peer-ca", tls.peer_ca.secret_name,
                             {"CHATPLANE_PEER_TLS_CA": tls.peer_ca.ca_key}))
        if tier == "gateway":
            out.append(Mount("tls-client", client_secret_name(cluster, region), {
                "CHATPLANE_TLS_CERT": "tls.crt", "CHATPLANE_TLS_KEY": "tls.key"}))
    return out + store_mounts(cluster)


def store_mounts(cluster: api.ChatCluster) -> list[Mount]:
    """Redis and CQL TLS files (also the storage migration Job's: it dials CQL)."""
    tls = cluster.tls
    out = []
    if tls.redis is not None:
        out.append(_files("tls-redis", tls.redis, "CHATPLANE_REDIS_TLS"))
    if tls.cql is not None:
        out.append(_files("tls-cql", tls.cql, "CHATPLANE_CQL_TLS"))
    return out


def volumes(mounted: list[Mount]) -> list[dict[str, Any]]:
    return [{"name": m.volume, "secret": {"secretName": m.secret, "defaultMode": 0o440}}
            for m in mounted]


def volume_mounts(mounted: list[Mount]) -> list[dict[str, Any]]:
    return [{"name": m.volume, "mountPath": f"{TLS_DIR}/{m.volume[4:]}", "readOnly": True}
            for m in mounted]


def env(mounted: list[Mount]) -> list[dict[str, Any]]:
    return [{"name": var, "value": f"{TLS_DIR}/{m.volume[4:]}/{key}"}
            for m in mounted for var, key in m.env.items()]


def user_secret_refs(cluster: api.ChatCluster) -> list[api.SecretKeyRef]:
    """The TLS Secret keys the platform team provides (the reconciler checks them)."""
    tls = cluster.tls
    out = []
    if tls.enabled and tls.client_secret_name:
        out += [api.SecretKeyRef(tls.client_secret_name, k) for k in ("tls.crt", "tls.key")]
    if tls.enabled and tls.peer_ca is not None:
        out.append(api.SecretKeyRef(tls.peer_ca.secret_name, tls.peer_ca.ca_key))
    for files in (tls.redis, tls.cql):
        if files is not None:
            out += [api.SecretKeyRef(files.secret_name, k)
                    for k in (files.ca_key, files.cert_key, files.key_key) if k]
    return out
