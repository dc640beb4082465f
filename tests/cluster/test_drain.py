"""Paced drain of a gateway in a real `cluster up`: readiness false at once,
dispatch stops listing it, clients are moved at the set rate (not in a
burst), the process exits when empty, and chat traffic running through it
all loses, duplicates and reorders nothing.

The issue's size: 2,000 clients (lean raw-TCP clients from the bench, so
the test process is not the bottleneck) plus chatting SDK devices, drained
at 500 conn/s; a second, small test drains by SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest

from chatplane.bench.idle import connect_all
from chatplane.client import Client
from tests.cluster.conftest import Chat, ClusterFactory, connections, get_json

pytestmark = [pytest.mark.redis, pytest.mark.slow]

IDLE = 2000
RATE = 500.0


def post_drain(url: str, rate: float, deadline_s: float, secret: str) -> dict[str, object]:
    request = urllib.request.Request(
        url + "/admin/drain", data=json.dumps({"rate": rate, "deadline_s": deadline_s}).encode(),
        method="POST", headers={"Content-Type": "application/json",
                                "Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.load(response))


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def _connect_idle(url: str, cluster_signer_mint: object, count: int) -> list[Client]:
    clients = [Client(url, cluster_signer_mint(f"idle{i}", "d")) for i in range(count)]  # type: ignore[operator]
    sem = asyncio.Semaphore(50)

    async def one(c: Client) -> None:
        async with sem:
            await c.connect()

    await asyncio.gather(*(one(c) for c in clients))
    return clients


async def test_drain_moves_clients_at_the_set_rate(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=1, states=1)
    idle, dispatcher, _ = await connect_all(cluster.dispatch_url, cluster.signer, IDLE, 400.0,
                                            "idle", timeout_s=90)
    chat = Chat()
    await chat.open(cluster, pairs=3, tag="d")
    on_gw1 = connections(cluster, "gw-1")
    total = IDLE + len(chat.devices)
    assert on_gw1 > IDLE // 4, f"only {on_gw1} clients on gw-1"

    async def drain() -> float:
        await asyncio.sleep(0.3)
        gw1 = cluster.members["gw-1"]
        began = time.monotonic()
        assert post_drain(gw1.admin_url, RATE, 60, cluster.admin_secret)["draining"] is True
        assert await asyncio.to_thread(http_status, gw1.url + "/readyz") == 503
        for _ in range(30):  # ipconf reads the registry at most once a second
            listed = get_json(cluster.dispatch_url + "/v1/dispatch?uid=someone")["endpoints"]
            ids = [e["gateway_id"] for e in listed]  # type: ignore[index, union-attr]
            if ids == ["gw-2"]:
                break
            await asyncio.sleep(0.1)
        assert ids == ["gw-2"], "dispatch still lists the draining gateway"
        assert time.monotonic() - began < 2.5
        assert gw1.proc is not None
        await asyncio.to_thread(gw1.proc.wait, 60)  # exits by itself once empty
        return time.monotonic() - began

    took, _ = await asyncio.wait_for(asyncio.gather(drain(), chat.send(40, "m")), 150)
    expected = on_gw1 / RATE
    assert 0.6 * expected <= took <= expected + 10, f"{on_gw1} clients drained in {took:.1f}s"
    await chat.settle(60)
    chat.assert_clean()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while connections(cluster, "gw-2") < total and loop.time() < deadline:
        await asyncio.sleep(0.2)
    assert connections(cluster, "gw-2") == total
    assert cluster.members["gw-1"].proc is not None
    assert cluster.members["gw-1"].proc.returncode == 0
    await chat.close()
    await asyncio.gather(*(c.close() for c in idle))
    await dispatcher.close()


async def test_sigterm_drains_then_exits(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=1, states=1,
                           env={"CHATPLANE_DRAIN_RATE": "20", "CHATPLANE_DRAIN_DEADLINE_S": "30"})
    idle = await _connect_idle(cluster.dispatch_url, cluster.signer.mint, 40)
    on_gw1 = connections(cluster, "gw-1")
    began = time.monotonic()
    code = await asyncio.to_thread(cluster.terminate, "gw-1", 60)
    took = time.monotonic() - began
    assert code == 0
    assert took >= 0.6 * on_gw1 / 20, f"{on_gw1} clients in {took:.1f}s: a burst, not paced"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while connections(cluster, "gw-2") < len(idle) and loop.time() < deadline:
        await asyncio.sleep(0.2)
    assert connections(cluster, "gw-2") == len(idle)
    await asyncio.gather(*(c.close() for c in idle))
