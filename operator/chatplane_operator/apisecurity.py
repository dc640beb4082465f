"""The security part of the ChatCluster API: TLS, NetworkPolicy and token key settings.

Split from `api.py` (which re-exports every name here, so `api.Tls` and the others are the
contract's names): the dataclasses with their defaults and how the spec's `tls`,
`networkPolicy` and `auth` objects parse. The rules that judge them are in
`api.validate()`, with the CRD's messages.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")  # no ':' or ',': they separate CHATPLANE_TOKEN_KEYS
ISSUER_KINDS: tuple[str, ...] = ("Issuer", "ClusterIssuer")


def _get(d: Mapping[str, Any], key: str, default: Any) -> Any:
    value = d.get(key)
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class IssuerRef:
    """A cert-manager issuer: with one, the operator emits `Certificate`s, not Secrets."""

    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A Secret with a CA bundle and, optionally, a client certificate and key."""

    secret_name: str
    ca_key: str = "ca.crt"
    cert_key: str = ""  # empty: no client certificate
    key_key: str = ""


@dataclasses.dataclass(frozen=True)
class Tls:
    enabled: bool = True
    issuer: IssuerRef | None = None  # None: the operator's own CA per ChatCluster
    client_secret_name: str = ""  # empty: the client-facing certificate is issued too
    lifetime_hours: int = 2160  # of an issued certificate; renewed with 1/3 left
    peer_ca: TlsFiles | None = None  # the CA of peer clusters' regions (default: ours)
    redis: TlsFiles | None = None
    cql: TlsFiles | None = None


@dataclasses.dataclass(frozen=True)
class NetworkPolicy:
    enabled: bool = True
    operator_namespace: str = "chatplane-system"
    operator_labels: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "app.kubernetes.io/name": "chatplane", "app.kubernetes.io/component": "operator"})
    metrics_namespaces: tuple[str, ...] = ()  # may scrape /metrics on the admin port


@dataclasses.dataclass(frozen=True)
class Auth:
    signing_key_id: str = ""  # empty: one key (CHATPLANE_TOKEN_SECRET), no rotation
    token_ttl_seconds: int = 86400  # how long an old key keeps verifying after a rotation


def _tls_files(d: Mapping[str, Any] | None) -> TlsFiles | None:
    if not d:
        return None
    return TlsFiles(secret_name=str(d["secretName"]), ca_key=str(_get(d, "caKey", "ca.crt")),
                    cert_key=str(_get(d, "certKey", "")), key_key=str(_get(d, "keyKey", "")))


def parse_tls(d: Mapping[str, Any]) -> Tls:
    issuer = d.get("issuerRef")
    return Tls(
        enabled=bool(_get(d, "enabled", True)),
        issuer=IssuerRef(name=str(issuer["name"]), kind=str(_get(issuer, "kind", "Issuer")),
                         group=str(_get(issuer, "group", "cert-manager.io")))
        if issuer else None,
        client_secret_name=str(_get(d, "clientSecretName", "")),
        lifetime_hours=int(_get(d, "certificateLifetimeHours", Tls.lifetime_hours)),
        peer_ca=_tls_files(d.get("peerCA")),
        redis=_tls_files(d.get("redis")),
        cql=_tls_files(d.get("cql")),
    )


def parse_network_policy(d: Mapping[str, Any]) -> NetworkPolicy:
    default = NetworkPolicy()
    return NetworkPolicy(
        enabled=bool(_get(d, "enabled", True)),
        operator_namespace=str(_get(d, "operatorNamespace", default.operator_namespace)),
        operator_labels=dict(_get(d, "operatorPodLabels", default.operator_labels)),
        metrics_namespaces=tuple(str(n) for n in _get(d, "metricsNamespaces", [])),
    )


def parse_auth(d: Mapping[str, Any]) -> Auth:
    return Auth(signing_key_id=str(_get(d, "signingKeyId", "")),
                token_ttl_seconds=int(_get(d, "tokenTTLSeconds", Auth.token_ttl_seconds)))
