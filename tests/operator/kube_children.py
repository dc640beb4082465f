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


def succeed_migration(kube: Kube, namespace: str) -> str:
    """Play the Job controller: the storage migration Job that has not succeeded yet (the
    one for the current spec) succeeds; its name."""
    def pending(job: dict[str, Any]) -> bool:
        st = job.get("status") or {}
        return not st.get("succeeded") and not st.get("conditions")  # neither done nor failed

    job = wait_until(lambda: next((j for j in kube.list("Job", namespace, SELECTOR)
                                   if pending(j)), None), 20, "a migration Job that has not run")
    name = str(job["metadata"]["name"])
    kube.merge_patch("Job", namespace, name, {"status": {
        "succeeded": 1, "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z", "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}}, sub="status")
    return name


def migrated_tiers(kube: Kube, namespace: str, regions: tuple[str, ...],
                   cluster: str = "chat") -> None:
    """Succeed the migration, then wait for the tiers it held (im, created with no
    replicas) to get theirs."""
    succeed_migration(kube, namespace)
    for region in regions:
        wait_until(lambda r=region: kube.get("Deployment", namespace, f"{cluster}-{r}-im")
                   ["spec"]["replicas"] > 0, 20, f"the im tier of {region} released")


def run_ready_pod(kube: Kube, namespace: str, kind: str, workload: str, pod: str) -> None:
    """Play the controller and the kubelet for one pod: `pod` created from `workload`'s
    current template (its labels say its version), Ready."""
    template = kube.get(kind, namespace, workload)["spec"]["template"]
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": pod, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"]})
    kube.merge_patch("Pod", namespace, pod, {"status": {
        "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}, sub="status")
