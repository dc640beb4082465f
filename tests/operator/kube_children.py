"""Reading what the operator made: its child objects and the ChatCluster's status."""

from __future__ import annotations

from typing import Any

from conftest import wait_until
from kube_client import Kube

CHILD_KINDS = ("ConfigMap", "Service", "PodDisruptionBudget", "Deployment", "StatefulSet",
               "Job")
PER_REGION = {"ConfigMap": 1, "Service": 5, "PodDisruptionBudget": 4, "Deployment": 3,
              "StatefulSet": 1}
SELECTOR = "app.kubernetes.io/managed-by=chatplane-operator"


def children(kube: Kube, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for kind in CHILD_KINDS:
        for obj in kube.list(kind, namespace, SELECTOR):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def expected_count(regions: int) -> int:
    return regions * sum(PER_REGION.values()) + 1  # + the storage migration Job


def wait_reconciled(kube: Kube, namespace: str, regions: int, timeout: float = 30) -> Any:
    return wait_until(lambda: len(children(kube, namespace)) == expected_count(regions)
                      and children(kube, namespace), timeout, "every child object")


def cluster_status(kube: Kube, namespace: str, name: str = "chat") -> dict[str, Any]:
    return (kube.get("ChatCluster", namespace, name) or {}).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def succeed_migration(kube: Kube, namespace: str) -> None:
    """Play the Job controller: the storage migration Job has succeeded."""
    job = wait_until(lambda: kube.list("Job", namespace, SELECTOR), 20, "the migration Job")[0]
    kube.merge_patch("Job", namespace, job["metadata"]["name"], {"status": {
        "succeeded": 1, "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z", "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}}, sub="status")
