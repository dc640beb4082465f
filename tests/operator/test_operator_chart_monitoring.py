"""The chart's monitoring objects (values-gated): `helm install` puts the ServiceMonitor,
PodMonitor, PrometheusRule and Grafana dashboard on the real apiserver (with stand-in
Prometheus Operator CRDs, kube_monitoring.py, and strict field validation), and every metric
the alerts and the dashboard query is one the operator or the data plane exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client as prom
import pytest
from kube_chart import CHART, helm, render
from kube_client import Kube
from kube_controlplane import ControlPlane
from kube_monitoring import crds

from chatplane_operator import metrics

pytestmark = pytest.mark.kube
ROOT = Path(__file__).resolve().parents[2]
ON = ("monitoring.serviceMonitor.enabled=true", "monitoring.prometheusRule.enabled=true",
      "monitoring.grafanaDashboard.enabled=true")
KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
METRIC = re.compile(r"\bchatplane_[a-z_]+")


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in render()}
    assert not kinds & KINDS
    assert "chatplane-operator-dashboard" not in {o["metadata"]["name"] for o in render()}


def test_helm_installs_the_monitoring_objects(plane: ControlPlane, kube: Kube,
                                              namespace: str) -> None:
    for crd in crds():
        kube.apply(crd)
    for crd in crds():
        kube.wait_for(lambda c=crd: kube.crd_established(c["metadata"]["name"]), 30,
                      "monitoring CRD Established")
    rendered = render(release="mon", namespace=namespace, sets=ON, crds=False)
    for obj in rendered:  # strict: a field the schema does not know is refused
        if obj["kind"] in KINDS:
            path = kube.path(obj["kind"], namespace)
            kube.request("POST", f"{path}?fieldValidation=Strict&dryRun=All", obj)
    binary = helm()
    assert binary
    done = subprocess.run([binary, "install", "mon", str(CHART), "--namespace", namespace,
                           "--kubeconfig", str(plane.kubeconfig), "--skip-crds",
                           *[a for s in ON for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    monitor = kube.get("ServiceMonitor", namespace, "mon-chatplane-operator")
    service = kube.get("Service", namespace, "mon-chatplane-operator-metrics")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    pods = kube.get("PodMonitor", namespace, "mon-chatplane-operator-dataplane")
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "admin"  # the tiers' port name
    rules = kube.get("PrometheusRule", namespace, "mon-chatplane-operator")
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"]}
    assert {"ChatplaneDrainStuck", "ChatplaneStorageWriterFailing", "ChatplaneStorageWriterDown",
            "ChatplanePeerUnreachable", "ChatplaneSendP99OverObjective"} <= alerts
    p99 = next(r for g in rules["spec"]["groups"] for r in g["rules"]
               if r["alert"] == "ChatplaneSendP99OverObjective")
    assert p99["expr"].endswith("> 0.25")  # the objective in seconds, the histogram's unit
    dashboard = kube.get("ConfigMap", namespace, "mon-chatplane-operator-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["chatplane.json"])["uid"] == "chatplane"


def _queried(objs: list[dict[str, Any]]) -> set[str]:
    rules = [r["expr"] for o in objs if o["kind"] == "PrometheusRule"
             for g in o["spec"]["groups"] for r in g["rules"]]
    board = json.loads((CHART / "dashboards" / "chatplane.json").read_text())
    exprs = rules + [t["expr"] for p in board["panels"] for t in p["targets"]]
    return {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in METRIC.findall(e)}


def test_every_queried_metric_is_exported() -> None:
    metrics.observe_status("ns", "chat", {
        "conditions": [{"type": "Degraded", "status": "False"}],
        "regions": [{"name": "eu", "rollout": {"gatewaysUpdated": "1/3", "draining": "g-2"},
                     "peers": [{"name": "us", "state": "Unreachable"}]}]})
    operator = {m.name for m in prom.REGISTRY.collect()}
    # the data plane's metric names, as its sources write them (chatplane.metrics: families
    # built at scrape time, names spelled out whole)
    source = "\n".join(p.read_text() for p in (ROOT / "dataplane" / "chatplane").rglob("*.py"))
    dataplane = set(re.findall(r'"(chatplane_[a-z_]+)', source))
    queried = _queried(render(sets=ON))
    missing = sorted(m for m in queried if m not in operator and m not in dataplane
                     and m.removesuffix("_total") not in operator)
    assert not missing, missing
    assert gauge_value("chatplane_operator_rollout_gateways",
                       {"cluster": "chat", "region": "eu", "state": "draining"}) == 1
    assert gauge_value("chatplane_operator_peers_unreachable",
                       {"cluster": "chat", "region": "eu"}) == 1
    metrics.forget("ns", "chat")
    assert gauge_value("chatplane_operator_peers_unreachable",
                       {"cluster": "chat", "region": "eu"}) is None


def gauge_value(name: str, labels: dict[str, str]) -> float | None:
    for family in prom.REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return float(sample.value)
    return None
