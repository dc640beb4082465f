"""What the operator tells an SRE about itself, from a real operator process on the real
apiserver: JSON log lines, each ChatCluster's conditions and the work queue as metrics, and
the liveness endpoint reporting the queue."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import running_operator, wait_until
from kube_children import wait_reconciled
from kube_client import Kube
from kube_controlplane import ControlPlane

pytestmark = pytest.mark.kube


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return str(reply.read().decode())


def test_json_logs_condition_metrics_and_queue_liveness(
    plane: ControlPlane, kube: Kube, namespace: str, make_cluster: Any, tmp_path: Path,
) -> None:
    with running_operator(plane, namespace, tmp_path / "operator.log",
                          extra=("--log-format", "json")) as operator:
        make_cluster(("eu",))
        wait_reconciled(kube, namespace, 1)
        series = (f'chatplane_operator_cluster_condition{{cluster="chat",namespace='
                  f'"{namespace}",status="True",type="Progressing"}} 1.0')
        text = wait_until(lambda: series in (t := _get(operator.metrics_port, "/metrics"))
                          and t, 20, "the Progressing condition as a metric")
        assert 'chatplane_operator_rollout_gateways{cluster="chat"' in text
        assert "chatplane_operator_leader 1.0" in text
        health = json.loads(_get(operator.health_port, "/healthz"))
        assert set(health["workqueue"]) == {"depth", "oldestSeconds"}
        assert health["workqueue"]["oldestSeconds"] < 600
        text = _get(operator.metrics_port, "/metrics")
        assert "chatplane_operator_workqueue_oldest_seconds" in text
        lines = [line for line in operator.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"ts", "level", "service", "logger", "msg"} <= set(entries[0])
    assert any(e["logger"] == "chatplane_operator.handlers" and "reconciled" in e["msg"]
               for e in entries)
