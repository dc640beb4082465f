"""A pass reads each data-plane pod once, all at once, under one deadline: on the real
kube-apiserver, with the operator process unchanged.

No kubelet runs next to the test apiserver, so the test plays it: it creates the gateway
and im pods of two regions from their workloads' templates and gives each a `podIP` on
its own loopback address, where a real local server plays that pod's HTTP port
(`pod_servers.py`). One gateway and one im pod hang (accept, never answer). The pass must
still end with the right status (the hanging gateway counted as 0, the hanging im pod's
report missing, with why), and every pod must have been asked exactly once per pass:
the servers count what they were asked, the operator's metrics count its passes.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import OperatorProcess, mark_workloads_ready, running_operator, wait_until
from kube_children import cluster_status, condition, succeed_migration, wait_reconciled
from kube_client import Kube
from pod_servers import AnsweringPod, HangingPod, shared_port

pytestmark = pytest.mark.kube

DEADLINE_S = 1
QUIET_S = 5  # no pass for this long: none is under way (resync is off, nothing pokes)
GATEWAYS = {"eu": {"127.0.0.11": 5, "127.0.0.12": 7, "127.0.0.13": None}, "us": {"127.0.0.15": 11}}
IMS = {"eu": {"127.0.0.14": "us"}, "us": {"127.0.0.16": None}}  # None: hangs
HOSTS = [h for tier in (GATEWAYS, IMS) for pods in tier.values() for h in pods]


@pytest.fixture
def quiet_operator(plane: Any, kube: Kube, namespace: str,
                   tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator with no resync within the test: only the test's pokes cause passes."""
    with running_operator(plane, namespace, tmp_path / "operator.log", extra=(
            "--resync-seconds", "600", "--read-deadline-seconds", str(DEADLINE_S))) as proc:
        yield proc


@pytest.fixture
def pods() -> Iterator[tuple[int, int, dict[str, AnsweringPod | HangingPod]]]:
    """The pods' ports, by address: the HTTP port (nothing read there) and the admin port,
    where the operator reads the gateways' counts and the im pods' peer reports, each the
    same on every pod (the cluster's)."""
    port = shared_port(HOSTS)
    admin = port
    while admin == port:
        admin = shared_port(HOSTS)
    servers: dict[str, AnsweringPod | HangingPod] = {}
    for host, count in [(h, n) for region in GATEWAYS.values() for h, n in region.items()]:
        servers[host] = (HangingPod(host, admin) if count is None
                         else AnsweringPod(host, admin, {"/admin/drain": {"connections": count}}))
    for host, peer in [(h, p) for region in IMS.values() for h, p in region.items()]:
        servers[host] = (HangingPod(host, admin) if peer is None else AnsweringPod(
            host, admin, {"/v1/peers": {"peers": [{"name": peer, "ok": True}]}}))
    yield port, admin, servers
    for server in servers.values():
        server.close()


def _asked(server: AnsweringPod | HangingPod) -> int:
    if isinstance(server, HangingPod):
        return server.accepted
    return sum(server.requests.values())


def _passes(operator: OperatorProcess) -> int:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return int(sum(float(line.split()[-1]) for line in lines
                   if line.startswith("chatplane_operator_reconciles_total{")))


def _settled(operator: OperatorProcess) -> int:
    """The number of passes so far, once none has ended for QUIET_S."""
    seen = {"n": -1, "since": time.monotonic()}

    def check() -> int | None:
        n, now = _passes(operator), time.monotonic()
        if n != seen["n"]:
            seen["n"], seen["since"] = n, now
            return None
        return n if now - seen["since"] >= QUIET_S else None

    return int(wait_until(check, 60, "the operator idle", step=0.5))


def _run_pods(kube: Kube, namespace: str) -> None:
    """Play the StatefulSet/Deployment controllers and the kubelet: every pod of the
    workloads' current templates, Running and Ready at its address."""
    for tier, kind, layout in (("gateway", "StatefulSet", GATEWAYS), ("im", "Deployment", IMS)):
        for region, hosts in layout.items():
            template = kube.get(kind, namespace, f"chat-{region}-{tier}")["spec"]["template"]
            for i, ip in enumerate(hosts):
                name = f"chat-{region}-{tier}-{i}"
                kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": name, "namespace": namespace, **{
                        k: template["metadata"][k] for k in ("labels", "annotations")
                        if k in template["metadata"]}}, "spec": template["spec"]})
                kube.merge_patch("Pod", namespace, name, {"status": {
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}]}}, sub="status")


def _layout(obj: dict[str, Any], port: int, admin: int) -> None:
    obj["spec"]["ports"] = {"http": port, "admin": admin}
    for region in obj["spec"]["regions"]:
        region["tiers"] = {"gateway": {"replicas": len(GATEWAYS[region["name"]])},
                           "im": {"replicas": len(IMS[region["name"]])}}


def _poke(kube: Kube, namespace: str, n: int) -> None:
    """A change to a child the operator watches (a status field it does not read)."""
    kube.merge_patch("StatefulSet", namespace, "chat-eu-gateway",
                     {"status": {"collisionCount": n}}, sub="status")


def test_each_pod_is_read_once_per_pass_and_a_hanging_pod_does_not_hold_the_pass(
    kube: Kube, namespace: str, quiet_operator: OperatorProcess, make_cluster: Any,
    pods: tuple[int, int, dict[str, AnsweringPod | HangingPod]],
) -> None:
    port, admin, servers = pods
    make_cluster(("eu", "us"), mutate=lambda o: _layout(o, port, admin))
    wait_reconciled(kube, namespace, 2)
    mark_workloads_ready(kube, namespace, ("eu", "us"))
    succeed_migration(kube, namespace)
    _run_pods(kube, namespace)
    before = _settled(quiet_operator)
    asked_before = {host: _asked(s) for host, s in servers.items()}

    for n in (1, 2):
        _poke(kube, namespace, n)
        status = wait_until(lambda: (s := cluster_status(kube, namespace)).get(
            "connections") == 23 and condition(s, "ReplicationReady").get("reason")
            == "PeerReportMissing" and s, 30, "the pods' counts and reports in the status")
        passes = _settled(quiet_operator) - before
        assert passes >= n
        asked = {host: _asked(s) - asked_before[host] for host, s in servers.items()}
        assert asked == {host: passes for host in HOSTS}, f"{passes} passes"

    regions = {r["name"]: r for r in status["regions"]}
    assert (regions["eu"]["connections"], regions["us"]["connections"]) == (12, 11)
    assert regions["eu"]["peers"] == [{"name": "us", "state": "Reachable", "message": ""}]
    late = f"GET http://127.0.0.16:{admin}/v1/peers: no answer within {DEADLINE_S}s"
    assert condition(status, "ReplicationReady")["message"] == \
        f"us: no peer report (chat-us-im-0: {late})"
    # the hanging gateway is ready at the current revision: counted as 0, not replaced
    assert [regions[r]["rollout"]["phase"] for r in ("eu", "us")] == ["Done", "Done"]
    assert kube.get("Pod", namespace, "chat-eu-gateway-2") is not None
    hanging = [s for s in servers.values() if isinstance(s, HangingPod)]
    wait_until(lambda: all(s.closed_by_client == s.accepted for s in hanging), 10,
               "every late read given up (its connection closed)")
    log = quiet_operator.log()
    assert "chat-eu-gateway-2 (GET http://127.0.0.13" in log and "chat-us-im-0 (GET" in log
