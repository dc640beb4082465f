"""Names, labels, selectors and owner references shared by every builder."""

from __future__ import annotations

from typing import Any

from chatplane_operator import api

MANAGED_BY = "chatplane-operator"
CLUSTER_LABEL = "chatplane.dev/cluster"
REGION_LABEL = "chatplane.dev/region"
CONFIG_HASH = "chatplane.dev/config-hash"
# Gateway pods: the template revision they run (the drain rollout compares it with the
# StatefulSet's) and, while the operator drains one, since when (epoch seconds).
REVISION = "chatplane.dev/revision"
DRAINING_SINCE = "chatplane.dev/draining-since"


def region_name(cluster: api.ChatCluster, region: api.Region) -> str:
    return f"{cluster.name}-{region.name}"


def tier_name(cluster: api.ChatCluster, region: api.Region, tier: str) -> str:
    return f"{cluster.name}-{region.name}-{tier}"


def config_name(cluster: api.ChatCluster, region: api.Region) -> str:
    return f"{cluster.name}-{region.name}-config"


def generated_secret_name(cluster: api.ChatCluster) -> str:
    return f"{cluster.name}-generated"


def gateway_public_name(cluster: api.ChatCluster, region: api.Region) -> str:
    return f"{cluster.name}-{region.name}-gateway-public"


def selector(cluster: api.ChatCluster, region: api.Region | None, tier: str | None) -> dict[str, str]:
    """Immutable selector labels: never include the version."""
    out = {"app.kubernetes.io/name": "chatplane", "app.kubernetes.io/instance": cluster.name}
    if region is not None:
        out[REGION_LABEL] = region.name
    if tier is not None:
        out["app.kubernetes.io/component"] = tier
    return out


def labels(cluster: api.ChatCluster, region: api.Region | None, tier: str | None) -> dict[str, str]:
    """Selector labels plus the ones that may change (version, management)."""
    return {
        **selector(cluster, region, tier),
        "app.kubernetes.io/part-of": "chatplane",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": cluster.image.version,
        CLUSTER_LABEL: cluster.name,
    }


def owner_reference(cluster: api.ChatCluster) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": cluster.name,
        "uid": cluster.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    cluster: api.ChatCluster, name: str, region: api.Region | None, tier: str | None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": cluster.namespace,
        "labels": labels(cluster, region, tier),
        "ownerReferences": [owner_reference(cluster)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def service_host(cluster: api.ChatCluster, region: api.Region, tier: str) -> str:
    return f"{tier_name(cluster, region, tier)}.{cluster.namespace}.svc"
