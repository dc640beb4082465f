"""Configuration builders: the per-region ConfigMap, the generated Secret, and the env wiring.

Every tier of a region reads the same ConfigMap through `envFrom`; secrets reach containers
only through `secretKeyRef` env entries, never through the ConfigMap.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import certs, naming

DATA_DIR = "/tmp/chatplane"
TOKEN_KEY = "token"
ADMIN_KEY = "admin"
TOKEN_KEYS_KEY = "keys"  # in the token key Secret: CHATPLANE_TOKEN_KEYS, "kid:secret,..."


def token_keys_secret_name(cluster: api.ChatCluster) -> str:
    return f"{cluster.name}-token-keys"


def peers(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, str]]:
    """Every other region, this cluster's and other clusters' (`spec.peers`), as
    CHATPLANE_PEERS entries."""
    own = [
        {
            "name": other.name,
            "endpoint": f"{naming.service_host(cluster, other, 'im')}:{cluster.ports.grpc}",
            "datacenter": other.datacenter,
        }
        for other in cluster.regions
        if other.name != region.name
    ]
    return own + [{"name": p.name, "endpoint": p.endpoint, "datacenter": p.datacenter}
                  for p in cluster.peers]


def replication_map(cluster: api.ChatCluster) -> dict[str, int]:
    """The keyspace's NetworkTopologyStrategy map: datacenter -> replication factor, over this
    cluster's regions and its peers; a datacenter at 0 (being decommissioned) is left out, so
    the migration Job drops it from the keyspace."""
    out = {r.datacenter: r.cql.replication_factor for r in cluster.regions}
    out.update({p.datacenter: p.replication_factor for p in cluster.peers})
    return {dc: rf for dc, rf in out.items() if rf > 0}


def config_data(cluster: api.ChatCluster, region: api.Region) -> dict[str, str]:
    """Plain (non-secret) CHATPLANE_* settings shared by every tier of `region`."""
    grpc = cluster.ports.grpc
    data = {
        "CHATPLANE_REGION": region.name,
        "CHATPLANE_CLUSTER": f"{cluster.namespace}/{cluster.name}",  # told to peer regions
        # In a pod every tier listens on all interfaces; state lives in storage, and the
        # root filesystem is read-only, so the data dir is the emptyDir /tmp.
        "CHATPLANE_HOST": "0.0.0.0",
        "CHATPLANE_DATA_DIR": DATA_DIR,
        "CHATPLANE_HTTP_PORT": str(cluster.ports.http),
        "CHATPLANE_TCP_PORT": str(cluster.ports.tcp),
        "CHATPLANE_GRPC_PORT": str(grpc),
        "CHATPLANE_STORAGE": "scylla",
        "CHATPLANE_CQL_HOSTS": ",".join(region.cql.hosts),
        "CHATPLANE_KEYSPACE": cluster.storage.keyspace,
        "CHATPLANE_CQL_CONSISTENCY": cluster.storage.consistency,
        "CHATPLANE_CQL_DATACENTER": region.datacenter,
        "CHATPLANE_CQL_REPLICATION": json.dumps(replication_map(cluster), sort_keys=True),
        "CHATPLANE_STATE_ADDRS": f"{naming.service_host(cluster, region, 'state')}:{grpc}",
        "CHATPLANE_IM_ADDRS": f"{naming.service_host(cluster, region, 'im')}:{grpc}",
        "CHATPLANE_LARGE_GROUP_THRESHOLD": str(cluster.limits.large_group_threshold),
        "CHATPLANE_MAX_FRAME_BYTES": str(cluster.limits.max_frame_bytes),
        "CHATPLANE_RATE_LIMIT_FRAMES_PER_S": str(cluster.limits.rate_limit_frames_per_second),
        "CHATPLANE_DRAIN_RATE": str(cluster.upgrade.drain_rate),
        "CHATPLANE_DRAIN_DEADLINE_S": str(cluster.upgrade.drain_deadline_seconds),
        "CHATPLANE_PEERS": json.dumps(peers(cluster, region), sort_keys=True),
        "CHATPLANE_REGION_DURABILITY": cluster.replication.durability,
    }
    if cluster.replication.durability == "sync" and peers(cluster, region):
        # regions on one keyspace ack a `sync` send once its writes are in every
        # datacenter: the data plane refuses to start on any other write level
        data["CHATPLANE_CQL_WRITE_CONSISTENCY"] = "EACH_QUORUM"
    if cluster.observability.otlp_endpoint:
        data["CHATPLANE_OTLP_ENDPOINT"] = cluster.observability.otlp_endpoint
        data["CHATPLANE_TRACE_SAMPLE_RATIO"] = str(cluster.observability.trace_sample_ratio)
    archive = cluster.storage.archive
    if archive is not None:
        data.update({
            "CHATPLANE_ARCHIVE_AFTER_DAYS": f"{archive.after_days:g}",
            "CHATPLANE_ARCHIVE_INTERVAL_S": str(archive.interval_seconds),
            "CHATPLANE_RETENTION_DAYS_DIRECT": f"{archive.retention_days_direct:g}",
            "CHATPLANE_RETENTION_DAYS_GROUP": f"{archive.retention_days_group:g}",
            "CHATPLANE_RETENTION_DAYS_EVENTS": f"{archive.retention_days_events:g}",
            "CHATPLANE_ARCHIVE_S3_ENDPOINT": archive.s3.endpoint,
            "CHATPLANE_ARCHIVE_S3_BUCKET": archive.s3.bucket,
            "CHATPLANE_ARCHIVE_S3_REGION": archive.s3.region,
            "CHATPLANE_ARCHIVE_S3_PREFIX": archive.s3.prefix,
        })
    data["CHATPLANE_ADMIN_PORT"] = str(cluster.ports.admin)
    return data


def build_configmap(cluster: api.ChatCluster, region: api.Region) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": naming.metadata(cluster, naming.config_name(cluster, region), region, None),
        "data": config_data(cluster, region),
    }


def token_ref(cluster: api.ChatCluster) -> api.SecretKeyRef:
    if cluster.token_secret is not None:
        return cluster.token_secret
    return api.SecretKeyRef(naming.generated_secret_name(cluster), TOKEN_KEY)


def admin_ref(cluster: api.ChatCluster) -> api.SecretKeyRef:
    return api.SecretKeyRef(naming.generated_secret_name(cluster), ADMIN_KEY)


def secret_refs(cluster: api.ChatCluster, region: api.Region) -> dict[str, api.SecretKeyRef]:
    """Env var -> Secret key, for every secret a region's containers read."""
    refs = {
        "CHATPLANE_REDIS_URL": region.redis,
        "CHATPLANE_TOKEN_SECRET": token_ref(cluster),
        "CHATPLANE_ADMIN_SECRET": admin_ref(cluster),
    }
    if cluster.auth.signing_key_id:  # the key set the operator rotates (tokenkeys.py)
        refs["CHATPLANE_TOKEN_KEYS"] = api.SecretKeyRef(token_keys_secret_name(cluster),
                                                       TOKEN_KEYS_KEY)
    creds = cluster.storage.credentials
    if creds is not None:
        refs["CHATPLANE_CQL_USERNAME"] = api.SecretKeyRef(creds.name, creds.username_key)
        refs["CHATPLANE_CQL_PASSWORD"] = api.SecretKeyRef(creds.name, creds.password_key)
    archive = cluster.storage.archive
    if archive is not None:
        s3 = archive.s3
        refs["CHATPLANE_ARCHIVE_S3_ACCESS_KEY"] = api.SecretKeyRef(s3.credentials,
                                                                   s3.access_key_key)
        refs["CHATPLANE_ARCHIVE_S3_SECRET_KEY"] = api.SecretKeyRef(s3.credentials,
                                                                   s3.secret_key_key)
    return refs


def user_secret_refs(cluster: api.ChatCluster, region: api.Region) -> list[api.SecretKeyRef]:
    """The Secret keys the platform team must provide (not the generated ones): the env's
    and the TLS files' (client certificate, peer CA, Redis and CQL TLS)."""
    generated = naming.generated_secret_name(cluster)
    refs = [ref for ref in secret_refs(cluster, region).values()
            if ref.name not in (generated, token_keys_secret_name(cluster))]
    return refs + certs.user_secret_refs(cluster)


def secret_env(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for var, ref in sorted(secret_refs(cluster, region).items())
    ]


def config_hash(cluster: api.ChatCluster, region: api.Region) -> str:
    """Changes whenever a region's configuration changes, to roll its pods: the ConfigMap,
    the Secret refs, and the token key ids in order (a rotation step rolls every pod)."""
    refs = {k: [v.name, v.key] for k, v in secret_refs(cluster, region).items()}
    blob = json.dumps([config_data(cluster, region), refs, list(cluster.token_kids)],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_generated_secret(
    cluster: api.ChatCluster, token: bytes | None = None, admin: bytes | None = None
) -> dict[str, Any]:
    """The Secret with the token signing key and the admin secret, created once and kept.

    Fresh random values unless given; the reconciler creates it only when absent.
    """
    token = token if token is not None else secrets.token_urlsafe(48).encode()
    admin = admin if admin is not None else secrets.token_urlsafe(32).encode()
    meta = naming.metadata(cluster, naming.generated_secret_name(cluster), None, None)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {
            TOKEN_KEY: base64.b64encode(token).decode(),
            ADMIN_KEY: base64.b64encode(admin).decode(),
        },
    }
