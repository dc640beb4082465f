"""The paced gateway rollout through the operator, on the real kube-apiserver.

No kubelet or StatefulSet controller runs here: `kube_gateways.GatewayPods` plays them
(re-creates a deleted gateway pod from the StatefulSet's current template and sets it
Ready), and `kube_gateways.FakeDrainEndpoint` stands in for the pods' drain endpoint, since
no gateway process can run as a pod here. The orchestrator itself is tested against real
gateway processes in `tests/drain/`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import OperatorProcess, mark_workloads_ready, wait_until
from kube_children import (
    cluster_status,
    condition,
    migrated_tiers,
    succeed_migration,
    wait_reconciled,
)
from kube_client import Kube
from kube_gateways import FakeDrainEndpoint, GatewayPods

pytestmark = pytest.mark.kube

STS = "chat-eu-gateway"
CONNECTIONS = 80  # per draining pod, sent away at RATE/s (2 s) by the fake endpoint
RATE = 40


@pytest.fixture
def endpoint() -> Iterator[FakeDrainEndpoint]:
    fake = FakeDrainEndpoint(CONNECTIONS)
    yield fake
    fake.close()


def _rollout(kube: Kube, namespace: str) -> dict[str, Any]:
    regions = cluster_status(kube, namespace).get("regions") or [{}]
    return dict(regions[0].get("rollout") or {})


def _events(kube: Kube, namespace: str, reason: str) -> list[str]:
    events = kube.list("Event", namespace)
    events.sort(key=lambda e: (e.get("firstTimestamp") or "", e["metadata"]["name"]))
    return [e["message"] for e in events if e.get("reason") == reason]


def _start(kube: Kube, namespace: str, make_cluster: Any, endpoint: FakeDrainEndpoint,
           ready_timeout: int = 300) -> None:
    make_cluster(("eu",), mutate=lambda o: o["spec"].update({
        "ports": {"admin": endpoint.port},  # the operator calls the admin port
        "upgrade": {"drainRate": RATE, "drainDeadlineSeconds": 30,
                    "readyTimeoutSeconds": ready_timeout}}))
    wait_reconciled(kube, namespace, 1)
    migrated_tiers(kube, namespace, ("eu",))
    mark_workloads_ready(kube, namespace, ("eu",))


def _bump(kube: Kube, namespace: str, version: str, migrate: bool = True) -> None:
    """A new version; its storage migration Job succeeds unless `migrate` is False."""
    kube.merge_patch("ChatCluster", namespace, "chat", {"spec": {"image": {"version": version}}})
    if migrate:
        succeed_migration(kube, namespace)


def test_version_bump_drains_and_replaces_gateways_in_order(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
    endpoint: FakeDrainEndpoint,
) -> None:
    _start(kube, namespace, make_cluster, endpoint)
    with GatewayPods(kube, namespace, STS, endpoint) as pods:
        old = pods.revision()
        done = wait_until(lambda: _rollout(kube, namespace).get("phase") == "Done"
                          and _rollout(kube, namespace), 20, "the first revision is settled")
        assert done["gatewaysUpdated"] == "3/3" and done["revision"] == old
        assert endpoint.posts == []  # nothing to drain: every pod runs the revision
        assert wait_until(lambda: cluster_status(kube, namespace).get("version"), 20,
                          "the version the pods run") == "0.1.0"
        _bump(kube, namespace, "0.2.0")
        new = wait_until(lambda: pods.revision() != old and pods.revision(), 20, "new template")
        assert new.startswith("0.2.0-")
        seen: list[dict[str, Any]] = []
        versions: list[str] = []

        def finished() -> bool:
            st = cluster_status(kube, namespace)
            rollout = dict((st.get("regions") or [{}])[0].get("rollout") or {})
            seen.append(rollout)
            versions.append(str(st.get("version")))
            return rollout.get("revision") == new and rollout.get("phase") == "Done"

        wait_until(finished, 60, "the rollout to 0.2.0")
        assert [name for name, rev in pods.created if rev == new] == [
            f"{STS}-2", f"{STS}-1", f"{STS}-0"]
    final = _rollout(kube, namespace)
    assert final == {"targetVersion": "0.2.0", "revision": new, "gatewaysUpdated": "3/3",
                     "draining": "", "connectionsLeft": 0, "phase": "Done"}
    # progress while it ran: the pod draining and its connections going down
    draining = [r for r in seen if r.get("phase") == "Draining"]
    assert {r["draining"] for r in draining} == {f"{STS}-2", f"{STS}-1", f"{STS}-0"}
    assert any(0 < r["connectionsLeft"] <= CONNECTIONS for r in draining)
    assert {r["gatewaysUpdated"] for r in seen} >= {"0/3", "1/3", "2/3", "3/3"}
    # status.version follows the ready pods: both versions mid-rollout, then the new one
    assert "0.1.0, 0.2.0" in versions
    assert wait_until(lambda: cluster_status(kube, namespace).get("version") == "0.2.0", 20,
                      "the new version only")
    assert {v["version"]: v["readyPods"] for v in cluster_status(kube, namespace)["versions"]
            } == {"0.2.0": 3}
    # the drain call carried the policy; one Event per pod drained and replaced
    assert endpoint.posts == [{"rate": RATE, "deadline_s": 30}] * 3
    # every call (drains and counts) carried the admin secret of the generated Secret
    admin = base64.b64decode(kube.get("Secret", namespace, "chat-generated")["data"]["admin"])
    assert set(endpoint.authorizations) == {f"Bearer {admin.decode()}"}
    replaced = _events(kube, namespace, "GatewayReplaced")
    assert [m.split()[3] for m in replaced] == [f"{STS}-2", f"{STS}-1", f"{STS}-0"], replaced
    assert len(_events(kube, namespace, "GatewayDraining")) == 3
    status = cluster_status(kube, namespace)
    assert condition(status, "Degraded")["status"] == "False"
    mark_workloads_ready(kube, namespace, ("eu",))  # the stateless tiers rolled meanwhile
    wait_until(lambda: condition(cluster_status(kube, namespace), "Progressing")["status"]
               == "False", 20, "Progressing False")


def test_a_new_pod_that_never_gets_ready_pauses_then_resumes(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
    endpoint: FakeDrainEndpoint,
) -> None:
    _start(kube, namespace, make_cluster, endpoint, ready_timeout=3)
    broken = {"0.3.0"}
    with GatewayPods(kube, namespace, STS, endpoint, broken=broken) as pods:
        old = pods.revision()
        _bump(kube, namespace, "0.3.0")
        new = wait_until(lambda: pods.revision() != old and pods.revision(), 20, "new template")
        status = wait_until(
            lambda: condition(cluster_status(kube, namespace), "Degraded").get("reason")
            == "RolloutPaused" and cluster_status(kube, namespace), 60, "Degraded: paused")
        degraded = condition(status, "Degraded")
        assert degraded["status"] == "True"
        assert f"gateway {STS}-2 (version {new}) not ready after 3s" in degraded["message"]
        rollout = status["regions"][0]["rollout"]
        assert rollout["phase"] == "Paused" and rollout["gatewaysUpdated"] == "0/3"
        # paused: nothing more is drained, the other pods keep their revision
        posts = len(endpoint.posts)
        time.sleep(3)
        assert len(endpoint.posts) == posts == 1
        notes = {n: p["metadata"].get("annotations") or {} for n, p in pods.pods().items()}
        assert [notes[f"{STS}-{i}"]["chatplane.dev/revision"] for i in (0, 1)] == [old, old]
        assert not any("chatplane.dev/draining-since" in a for a in notes.values())
        # the fix: the pod gets ready (here: what it waited for came back); the rest follows
        broken.clear()
        pods.set_ready(f"{STS}-2", True)
        wait_until(lambda: _rollout(kube, namespace).get("phase") == "Done"
                   and _rollout(kube, namespace).get("revision") == new, 60, "resumed rollout")
    wait_until(lambda: condition(cluster_status(kube, namespace), "Degraded")["status"]
               == "False", 20, "Degraded cleared")
    assert [name for name, rev in pods.created if rev == new] == [
        f"{STS}-2", f"{STS}-1", f"{STS}-0"]


def test_an_operator_restart_mid_drain_follows_that_drain(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
) -> None:
    """The rollout's state lives on the pods: a restarted operator follows the drain under
    way (no second drain call to that pod) and finishes the rollout."""
    slow = FakeDrainEndpoint(160)  # 4 s per pod at RATE
    try:
        _start(kube, namespace, make_cluster, slow)
        with GatewayPods(kube, namespace, STS, slow) as pods:
            _bump(kube, namespace, "0.4.0")
            wait_until(lambda: _rollout(kube, namespace).get("draining") == f"{STS}-2", 30,
                       "the first drain")
            operator.stop()
            assert len(slow.posts) == 1
            pod = kube.get("Pod", namespace, f"{STS}-2")
            assert "chatplane.dev/draining-since" in pod["metadata"]["annotations"]
            operator.start()
            wait_until(lambda: _rollout(kube, namespace).get("phase") == "Done"
                       and _rollout(kube, namespace).get("targetVersion") == "0.4.0", 60,
                       "the rollout finished by the restarted operator")
            assert len(slow.posts) == 3
            new = pods.revision()
            assert [name for name, rev in pods.created if rev == new] == [
                f"{STS}-2", f"{STS}-1", f"{STS}-0"]
        replaced = _events(kube, namespace, "GatewayReplaced")
        assert len(replaced) == 3 and all("(drained," in m for m in replaced), replaced
    finally:
        slow.close()


def _job_failed(kube: Kube, namespace: str, job: str) -> None:
    """Play the Job controller: the Job gave up."""
    kube.merge_patch("Job", namespace, job, {"status": {
        "failed": 7, "startTime": "2026-01-01T00:00:00Z", "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]}}, sub="status")


def test_the_tiers_wait_for_the_migration_and_a_failed_one_degrades(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
    endpoint: FakeDrainEndpoint,
) -> None:
    """A new version's pods start only once its storage migration Job has succeeded; a Job
    that fails for good leaves every tier at the version it runs and says why (Degraded)."""
    _start(kube, namespace, make_cluster, endpoint)
    with GatewayPods(kube, namespace, STS, endpoint) as pods:
        old = pods.revision()
        templates = {t: kube.get("Deployment", namespace, f"chat-eu-{t}")["spec"]["template"]
                     for t in ("ipconf", "state", "im")}
        _bump(kube, namespace, "0.5.0", migrate=False)
        st = wait_until(lambda: condition(cluster_status(kube, namespace), "Progressing")
                        .get("reason") == "MigrationRunning" and cluster_status(kube, namespace),
                        20, "Progressing: the migration runs")
        job = st["storage"]["migrationJob"]
        assert job in condition(st, "Progressing")["message"]
        assert condition(st, "Ready")["status"] == "False"
        assert condition(st, "Degraded")["status"] == "False"
        time.sleep(2)  # several passes: still nothing of 0.5.0 anywhere
        assert pods.revision() == old
        for tier, template in templates.items():
            assert kube.get("Deployment", namespace, f"chat-eu-{tier}")["spec"]["template"] \
                == template, tier
        assert not [n for n, rev in pods.created if rev.startswith("0.5.0-")]

        _job_failed(kube, namespace, job)
        st = wait_until(lambda: condition(cluster_status(kube, namespace), "Degraded")
                        .get("reason") == "MigrationFailed" and cluster_status(kube, namespace),
                        20, "Degraded: the migration failed")
        degraded = condition(st, "Degraded")
        assert degraded["status"] == "True"
        assert (f"storage migration Job {job} failed: BackoffLimitExceeded: Job has reached "
                "the specified backoff limit") in degraded["message"]
        assert st["storage"]["failure"].startswith("BackoffLimitExceeded: ")
        assert st["version"] == "0.1.0"  # the pods that serve are the old ones
        assert pods.revision() == old
        warned = _events(kube, namespace, "MigrationFailed")
        assert warned and job in warned[0]

        # fixed (here: the version bumped again) and migrated: the rollout goes on
        _bump(kube, namespace, "0.5.1")
        wait_until(lambda: _rollout(kube, namespace).get("phase") == "Done"
                   and _rollout(kube, namespace).get("targetVersion") == "0.5.1", 60,
                   "the rollout to 0.5.1")
    wait_until(lambda: condition(cluster_status(kube, namespace), "Degraded")["status"]
               == "False", 20, "Degraded cleared")
