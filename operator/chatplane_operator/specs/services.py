"""Service and PodDisruptionBudget builders.

Per region: a ClusterIP Service for ipconf (clients' entry point), headless Services for
gateway (the StatefulSet's pod DNS), state and im (gRPC address lists), one public gateway
Service whose type comes from `regions[].gateway.expose` and which exposes the client ports
only (http, tcp: never the admin port or gRPC), and one PDB per tier.
"""

from __future__ import annotations

from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import naming


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def _client_ports(cluster: api.ChatCluster, tier: str) -> list[dict[str, Any]]:
    ports = [_port("http", cluster.ports.http)]
    if tier == "gateway":
        ports.append(_port("tcp", cluster.ports.tcp))
    return ports


def _tier_ports(cluster: api.ChatCluster, tier: str) -> list[dict[str, Any]]:
    """Inside the cluster: the client ports, gRPC, and the admin port (the internal
    Services only; the public one has the client ports alone)."""
    ports = _client_ports(cluster, tier)
    if tier in ("state", "im"):
        ports.append(_port("grpc", cluster.ports.grpc))
    ports.append(_port("admin", cluster.ports.admin))
    return ports


def build_tier_service(cluster: api.ChatCluster, region: api.Region, tier: str) -> dict[str, Any]:
    """ipconf: ClusterIP; gateway, state, im: headless (every pod is addressed)."""
    spec: dict[str, Any] = {
        "selector": naming.selector(cluster, region, tier),
        # ipconf's Service is the clients' entry point (often behind an Ingress): client
        # port only; the operator reaches admin ports by pod IP
        "ports": _client_ports(cluster, tier) if tier == "ipconf" else _tier_ports(cluster, tier),
    }
    if tier == "ipconf":
        spec["type"] = "ClusterIP"
    else:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = tier == "gateway"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.metadata(cluster, naming.tier_name(cluster, region, tier), region, tier),
        "spec": spec,
    }


def build_gateway_public_service(cluster: api.ChatCluster, region: api.Region) -> dict[str, Any]:
    expose = region.gateway
    spec: dict[str, Any] = {
        "type": expose.type,
        "selector": naming.selector(cluster, region, "gateway"),
        "ports": _client_ports(cluster, "gateway"),  # never admin, never gRPC
    }
    if expose.type != "ClusterIP":
        spec["externalTrafficPolicy"] = "Local"
    meta = naming.metadata(
        cluster, naming.gateway_public_name(cluster, region), region, "gateway",
        annotations=expose.annotations,
    )
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def build_pdb(cluster: api.ChatCluster, region: api.Region, tier: str) -> dict[str, Any]:
    """At most `upgrade.maxUnavailable` pods of a tier may be evicted at once."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": naming.metadata(cluster, naming.tier_name(cluster, region, tier), region, tier),
        "spec": {
            "maxUnavailable": cluster.upgrade.max_unavailable,
            "selector": {"matchLabels": naming.selector(cluster, region, tier)},
        },
    }


def build_services(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    out = [build_tier_service(cluster, region, tier) for tier in api.TIERS]
    out.append(build_gateway_public_service(cluster, region))
    return out


def build_pdbs(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    return [build_pdb(cluster, region, tier) for tier in api.TIERS]
