"""Workload builders: Deployments for ipconf, state and im; the gateway StatefulSet.

Gateways use `updateStrategy: OnDelete`, so a template change never restarts a gateway by
itself: the operator chooses when each one drains and goes (the paced rollout).
"""

from __future__ import annotations

from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import naming, pods

DEPLOYMENT_TIERS: tuple[str, ...] = ("ipconf", "state", "im")


def build_deployment(cluster: api.ChatCluster, region: api.Region, tier: str) -> dict[str, Any]:
    if tier not in DEPLOYMENT_TIERS:
        raise ValueError(f"{tier} is not a Deployment tier")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": naming.metadata(cluster, naming.tier_name(cluster, region, tier), region, tier),
        "spec": {
            "replicas": region.tiers[tier].replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": naming.selector(cluster, region, tier)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": cluster.upgrade.max_unavailable,
                                  "maxSurge": 1},
            },
            "template": pods.pod_template(cluster, region, tier),
        },
    }


def build_gateway_sts(cluster: api.ChatCluster, region: api.Region) -> dict[str, Any]:
    name = naming.tier_name(cluster, region, "gateway")
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": naming.metadata(cluster, name, region, "gateway"),
        "spec": {
            "replicas": region.tiers["gateway"].replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": naming.selector(cluster, region, "gateway")},
            "template": pods.pod_template(cluster, region, "gateway"),
        },
    }


def build_workloads(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    out = [build_deployment(cluster, region, tier) for tier in DEPLOYMENT_TIERS]
    out.append(build_gateway_sts(cluster, region))
    return out
