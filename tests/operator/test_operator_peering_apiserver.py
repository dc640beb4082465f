"""High availability through kopf peering: two replicas, one works, the other takes over."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import kube_chart
import kube_controlplane
import pytest
from conftest import OperatorProcess, wait_until
from kube_children import cluster_status, succeed_migration, wait_reconciled
from kube_client import Kube

from chatplane_operator import peering

pytestmark = pytest.mark.kube


def test_outranked_reads_kopf_peering_status() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    fresh = (now - datetime.timedelta(seconds=10)).isoformat()
    stale = (now - datetime.timedelta(seconds=120)).isoformat()
    status = {"a@host": {"priority": 200, "lifetime": 60, "lastseen": fresh},
              "b@host": {"priority": 100, "lifetime": 60, "lastseen": fresh},
              "c@host": {"priority": 900, "lifetime": 60, "lastseen": stale}}
    assert peering.outranked(status, 100, now) is True
    assert peering.outranked(status, 200, now) is False  # 900 is dead
    assert peering.outranked(None, 1, now) is False


def test_two_peered_replicas_one_works_then_the_other_takes_over(
    plane: kube_controlplane.ControlPlane, kube: Kube, namespace: str, make_cluster: Any,
    tmp_path: Path,
) -> None:
    rendered = kube_chart.render(
        release="scoped", crds=False, namespace=kube_controlplane.OPERATOR_NAMESPACE,
        sets=("peering.enabled=true", "replicaCount=2", f"watchNamespaces={{{namespace}}}"))
    for obj in rendered:
        if obj["kind"] in ("Role", "RoleBinding", "KopfPeering"):
            kube.apply(obj)
    high = OperatorProcess(plane, namespace, tmp_path / "high.log", user="scoped",
                           extra=("--peering", "chatplane", "--priority", "200"))
    low = OperatorProcess(plane, namespace, tmp_path / "low.log", user="scoped",
                          extra=("--peering", "chatplane", "--priority", "100"))
    high.start()
    try:
        wait_until(lambda: "Activity 'start' succeeded" in high.log(), 20, "high started")
        low.start()  # kopf starts paused and stays so while a higher peer lives
        wait_until(lambda: "Activity 'start' succeeded" in low.log(), 20, "low started")
        time.sleep(1.0)  # let it read the peering
        make_cluster(("eu",))
        wait_reconciled(kube, namespace, 1)
        succeed_migration(kube, namespace)  # the tiers are held until then
        wait_until(lambda: cluster_status(kube, namespace).get("observedGeneration") == 1, 20,
                   "status")
        assert f"reconciled {namespace}/chat" in high.log()
        assert f"reconciled {namespace}/chat" not in low.log()
        high.stop()  # a graceful exit removes it from the peering
        wait_until(lambda: "Resuming operations" in low.log(), 30, "low resumes")
        regions = kube.get("ChatCluster", namespace, "chat")["spec"]["regions"]
        regions[0]["tiers"]["im"]["replicas"] = 4
        kube.merge_patch("ChatCluster", namespace, "chat", {"spec": {"regions": regions}})
        wait_until(lambda: kube.get("Deployment", namespace, "chat-eu-im")["spec"]["replicas"]
                   == 4, 30, "the other replica reconciles")
        assert f"reconciled {namespace}/chat" in low.log()
        assert "Forbidden" not in high.log() + low.log()
    finally:
        high.stop()
        low.stop()
        print("---- high ----\n" + high.log()[-3000:] + "\n---- low ----\n" + low.log()[-3000:])
