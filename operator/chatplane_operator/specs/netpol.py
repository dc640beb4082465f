"""The NetworkPolicy of a region: who may reach which port of its pods.

One policy per region selects every pod of the region (all tiers) and allows, on ingress:

- the client ports (`ports.http`, `ports.tcp`) from anywhere: clients, load balancers,
  the kubelet's probes;
- the gRPC and admin ports (`ports.grpc`, `ports.admin`) only from this ChatCluster's own
  pods (every region and tier, by the `app.kubernetes.io/instance` label) and from the
  operator's pods (`networkPolicy.operatorNamespace` + `operatorPodLabels`), which read
  the admin ports and call drains;
- the gRPC port from the networks of the listed peer regions (`peers[].cidrs`): regions
  run by other ChatClusters dial this region's im;
- the admin port from the namespaces in `networkPolicy.metricsNamespaces` (Prometheus:
  `/metrics` is served there; the admin API itself still needs the admin secret).

Everything else is refused once a CNI enforces NetworkPolicies. Off with
`networkPolicy.enabled: false`.
"""

from __future__ import annotations

from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import naming


def policy_name(cluster: api.ChatCluster, region: api.Region) -> str:
    return f"{naming.region_name(cluster, region)}-ingress"


def _ports(*numbers: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": n} for n in numbers]


def build_network_policy(cluster: api.ChatCluster, region: api.Region) -> dict[str, Any]:
    p = cluster.ports
    netpol = cluster.network_policy
    own = {"podSelector": {"matchLabels": naming.selector(cluster, None, None)}}
    operator = {
        "namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": netpol.operator_namespace}},
        "podSelector": {"matchLabels": dict(netpol.operator_labels)},
    }
    ingress: list[dict[str, Any]] = [
        {"ports": _ports(p.http, p.tcp)},  # no `from`: the world
        {"from": [own, operator], "ports": _ports(p.grpc, p.admin)},
    ]
    if netpol.metrics_namespaces:  # Prometheus: /metrics is on the admin port
        ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": ns}}} for ns in netpol.metrics_namespaces],
            "ports": _ports(p.admin)})
    cidrs = sorted({c for peer in cluster.peers for c in peer.cidrs})
    if cidrs:
        ingress.append({"from": [{"ipBlock": {"cidr": c}} for c in cidrs],
                        "ports": _ports(p.grpc)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": naming.metadata(cluster, policy_name(cluster, region), region, None),
        "spec": {
            "podSelector": {"matchLabels": naming.selector(cluster, region, None)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def build_network_policies(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    return [build_network_policy(cluster, region)] if cluster.network_policy.enabled else []
