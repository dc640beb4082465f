"""`ReplicationReady` follows what the regions' data plane reports, on the real apiserver.

No kubelet, Deployment controller or cluster DNS runs next to the test apiserver, so the
test plays them, and nothing in the operator is overridden: each region's data plane is a
real `chatplane up` process, run with that region's ConfigMap (`CHATPLANE_REGION`,
`CHATPLANE_CLUSTER`, `CHATPLANE_PEERS`) and the shared token Secret, listening on its own
loopback address (eu on 127.0.0.1, us on 127.0.0.2) at the cluster's HTTP and gRPC ports.
The test creates one im pod per region whose `podIP` is that address, which is how the
operator finds it (it reads `GET /v1/peers` on every running im pod, as in a cluster), and
it resolves the peer endpoints of `CHATPLANE_PEERS` (`chat-us-im.<ns>.svc:<grpc>`) to those
addresses, as the cluster DNS would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import OperatorProcess, running_operator, wait_until
from kube_children import cluster_status, condition, succeed_migration, wait_reconciled
from kube_client import Kube

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.support.regions import RegionProcess
from tests.support.server import free_port

pytestmark = [pytest.mark.kube, pytest.mark.slow]

ADDRESSES = {"eu": "127.0.0.1", "us": "127.0.0.2"}
KEY = "platform-provided-signing-key"


def _replication(kube: Kube, namespace: str) -> dict[str, Any]:
    return condition(cluster_status(kube, namespace), "ReplicationReady")


def _region_peers(kube: Kube, namespace: str) -> dict[str, list[tuple[str, str]]]:
    """`status.regions[].peers` as {region: [(peer, state)]}, regions that report only."""
    return {r["name"]: [(p["name"], p["state"]) for p in r["peers"]]
            for r in cluster_status(kube, namespace).get("regions") or [] if "peers" in r}


def _im_pod(kube: Kube, namespace: str, region: str) -> None:
    """Play the Deployment controller and the kubelet: one running im pod at the region's
    address."""
    template = kube.get("Deployment", namespace, f"chat-{region}-im")["spec"]["template"]
    name = f"chat-{region}-im-0"
    kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": template["spec"]})
    ip = ADDRESSES[region]
    kube.merge_patch("Pod", namespace, name, {"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}}, sub="status")


def _data_plane(kube: Kube, namespace: str, region: str, tmp_path: Path, http: int,
                grpc: int, env: dict[str, str] | None = None) -> RegionProcess:
    """`chatplane up` with the region's ConfigMap; peer hosts resolved as DNS would."""
    config = kube.get("ConfigMap", namespace, f"chat-{region}-config")["data"]
    peers = json.loads(config["CHATPLANE_PEERS"])
    for peer in peers:
        assert peer["endpoint"] == f"chat-{peer['name']}-im.{namespace}.svc:{grpc}"
        peer["endpoint"] = f"{ADDRESSES[peer['name']]}:{grpc}"
    proc = RegionProcess(tmp_path / region, config["CHATPLANE_REGION"],
                         host=ADDRESSES[region], http_port=http, grpc_port=grpc, key=KEY,
                         env={"CHATPLANE_CLUSTER": config["CHATPLANE_CLUSTER"],
                              "CHATPLANE_ADMIN_PORT": config["CHATPLANE_ADMIN_PORT"],
                              **(env or {})})
    proc.admin_port = int(config["CHATPLANE_ADMIN_PORT"])  # where the operator reads /v1/peers
    proc.set_peers(peers)
    return proc


@pytest.fixture
def fast_operator(plane: Any, kube: Kube, namespace: str,
                  tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator with a 1 s resync: pods are not watched, so each pass re-reads the
    peer reports (60 s by default)."""
    with running_operator(plane, namespace, tmp_path / "operator.log",
                          extra=("--resync-seconds", "1")) as proc:
        yield proc


@contextlib.contextmanager
def _wired_regions(kube: Kube, namespace: str, make_cluster: Any, tmp_path: Path,
                   replication: dict[str, int] | None = None,
                   env: dict[str, str] | None = None) -> Iterator[dict[str, RegionProcess]]:
    """A two-region ChatCluster, its migration done, and each region's data plane (not
    started) with the region's ConfigMap."""
    http, grpc, admin = free_port(), free_port(), free_port()
    kube.create({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "shared-token", "namespace": namespace},
                 "stringData": {"token": KEY}})
    make_cluster(("eu", "us"), mutate=lambda o: o["spec"].update({
        "ports": {"http": http, "grpc": grpc, "admin": admin},
        "auth": {"tokenSecretRef": {"name": "shared-token"}},
        **({"replication": replication} if replication else {})}))
    wait_reconciled(kube, namespace, 2)
    succeed_migration(kube, namespace)
    wait_until(lambda: _replication(kube, namespace).get("reason") == "ReplicationWired",
               20, "wired, nothing reported yet")
    regions = {r: _data_plane(kube, namespace, r, tmp_path, http, grpc, env) for r in ADDRESSES}
    try:
        yield regions
    finally:
        for proc in regions.values():
            proc.stop()


def _start(kube: Kube, namespace: str, regions: dict[str, RegionProcess]) -> dict[str, Any]:
    """Start both data planes and their im pods; wait for ReplicationReady."""
    for region, proc in regions.items():
        proc.start()
        _im_pod(kube, namespace, region)
    ready: dict[str, Any] = wait_until(
        lambda: _replication(kube, namespace).get("status") == "True"
        and _replication(kube, namespace), 30, "ReplicationReady")
    return ready


def test_replication_ready_follows_the_data_planes_peer_reports(
    kube: Kube, namespace: str, fast_operator: OperatorProcess, make_cluster: Any,
    tmp_path: Path,
) -> None:
    with _wired_regions(kube, namespace, make_cluster, tmp_path) as regions:
        wired = _replication(kube, namespace)
        assert wired["status"] == "Unknown"  # the operator cannot tell yet
        assert "no region's data plane reports its peers yet" in wired["message"]

        ready = _start(kube, namespace, regions)
        assert ready["reason"] == "ReplicationInSync"  # `up` replicates its own log
        assert ("every region's data plane reaches its 1 peer(s) and applies their logs "
                "within 1000 entries and 10 s") in ready["message"]
        assert regions["eu"].peers()["us"]["last_answer"]["cluster"] == f"{namespace}/chat"
        assert _region_peers(kube, namespace) == {"eu": [("us", "Reachable")],
                                                  "us": [("eu", "Reachable")]}

        regions["us"].kill()
        down = wait_until(lambda: _replication(kube, namespace).get("reason") == "PeerUnreachable"
                          and _replication(kube, namespace), 30, "PeerUnreachable")
        assert down["status"] == "False"
        assert "eu → us: UNAVAILABLE" in down["message"]
        assert "(pod chat-eu-im-0)" in down["message"]
        assert "us: no peer report (chat-us-im-0: GET http://127.0.0.2:" in down["message"]
        assert _region_peers(kube, namespace) == {"eu": [("us", "Unreachable")]}

        regions["us"].start()
        back = wait_until(lambda: _replication(kube, namespace).get("status") == "True"
                          and _replication(kube, namespace), 30, "ReplicationReady again")
        assert back["reason"] == "ReplicationInSync"


def _lag_rows(kube: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    """`status.regions[].peers[0].replication` by region, regions that report it only."""
    return {r["name"]: r["peers"][0]["replication"]
            for r in cluster_status(kube, namespace).get("regions") or []
            if r.get("peers") and "replication" in r["peers"][0]}


async def _send_in(region: RegionProcess, count: int) -> None:
    """alice and bob, both in `region`: their chat is homed there; `count` sends, acked."""
    alice = Client([region.url], TokenSigner(KEY).mint("alice", "a"))
    await alice.connect()
    try:
        conversation = await alice.direct("bob")
        for i in range(count):
            await alice.send_text(conversation, f"while eu's store is stuck {i}")
    finally:
        await alice.close()


def test_replication_ready_goes_false_while_a_region_cannot_apply_a_peers_log(
    kube: Kube, namespace: str, fast_operator: OperatorProcess, make_cluster: Any,
    tmp_path: Path,
) -> None:
    """eu's store is stuck (the test holds its SQLite write lock: a stalled disk, as eu's
    writer sees it) while us goes on sequencing: both regions still answer each other's
    Hello, so only the lag says replication is behind; it catches up once the lock goes."""
    with _wired_regions(kube, namespace, make_cluster, tmp_path, {"maxLagEntries": 5},
                        env={"CHATPLANE_REGION_DURABILITY": "async"}) as regions:
        _start(kube, namespace, regions)
        asyncio.run(_send_in(regions["us"], 1))  # places the chat's home (eu stores it)
        store = sqlite3.connect(next((tmp_path / "eu").glob("*.db")), timeout=10,
                                isolation_level=None)
        try:
            store.execute("BEGIN IMMEDIATE")  # eu's writer now waits, then fails busy
            asyncio.run(_send_in(regions["us"], 20))
            lagging = wait_until(
                lambda: _replication(kube, namespace).get("reason") == "ReplicationLagging"
                and _replication(kube, namespace), 30, "ReplicationLagging")
            assert lagging["status"] == "False"
            assert re.search(r"^eu ← us: lag [2-9]\d entries", lagging["message"]), lagging
            assert lagging["message"].endswith("(pod chat-eu-im-0)")
            assert regions["eu"].peers()["us"]["ok"]  # reachable all along
            row = _lag_rows(kube, namespace)["eu"]
            assert row["state"] in ("Lagging", "Stalled") and row["lag"] >= 20
        finally:
            store.execute("ROLLBACK")
            store.close()
        back = wait_until(lambda: _replication(kube, namespace).get("status") == "True"
                          and _replication(kube, namespace), 30, "ReplicationReady again")
        assert back["reason"] == "ReplicationInSync"
        assert _lag_rows(kube, namespace)["eu"]["lag"] == 0
