"""Everything a ChatCluster owns, per region, in the order the reconciler applies it."""

from __future__ import annotations

from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import certs, config, jobs, netpol, services, workloads

# The kinds the operator applies with server-side apply, in apply order.
APPLIED_KINDS: tuple[str, ...] = (
    "ConfigMap", "Certificate", "NetworkPolicy", "Service", "PodDisruptionBudget",
    "Deployment", "StatefulSet", "Job",
)


def applied_kinds(cluster: api.ChatCluster) -> tuple[str, ...]:
    """The kinds this cluster's objects may have: Certificates only with a cert-manager
    issuer (without cert-manager installed the kind does not exist)."""
    if cluster.tls.issuer is None:
        return tuple(k for k in APPLIED_KINDS if k != "Certificate")
    return APPLIED_KINDS


def build_region(cluster: api.ChatCluster, region: api.Region) -> list[dict[str, Any]]:
    """ConfigMap first (pods read it), then Certificates (cert-manager mode), the
    NetworkPolicy, Services, PDBs, workloads."""
    return [
        config.build_configmap(cluster, region),
        *certs.build_certificates(cluster, region),
        *netpol.build_network_policies(cluster, region),
        *services.build_services(cluster, region),
        *services.build_pdbs(cluster, region),
        *workloads.build_workloads(cluster, region),
    ]


def build_all(cluster: api.ChatCluster) -> dict[str, list[dict[str, Any]]]:
    """Region name -> its manifests (the generated Secret is separate: create-once)."""
    return {region.name: build_region(cluster, region) for region in cluster.regions}


def build_cluster(cluster: api.ChatCluster) -> list[dict[str, Any]]:
    """Objects of the whole cluster, applied after the first region's (they read its
    ConfigMap): the storage migration Job."""
    return [jobs.build_migrate_job(cluster)] if cluster.regions else []
