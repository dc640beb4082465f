"""Every tier's /readyz lists its problems; an im whose SQLite writer is held
up says so (real `chatplane gateway|state|im|ipconf` processes)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request

import pytest

from chatplane.client import Client
from tests.cluster.conftest import ClusterFactory
from tests.support import prom

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def readyz(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return response.read().decode()


async def test_each_tier_reports_problems_and_an_im_its_wedged_writer(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=1, ims=1, states=1, env={"CHATPLANE_WEDGE_S": "1"})
    for name, member in cluster.members.items():
        status, body = await asyncio.to_thread(readyz, member.url)
        assert status == 200 and body["problems"] == [], (name, body)
    im_metrics = await asyncio.to_thread(metrics, cluster.members["im-1"].admin_url)
    assert prom.samples(im_metrics)['chatplane_task_failures_total{task="im-delivery-outbox"}'] == 0
    assert prom.samples(im_metrics)["chatplane_storage_writer_errors_total"] == 0
    gateway_metrics = await asyncio.to_thread(metrics, cluster.members["gw-1"].admin_url)
    assert prom.samples(gateway_metrics)['chatplane_task_failures_total{task="gateway-deadline-sweep"}'] == 0

    signer = cluster.signer
    alice = Client(cluster.dispatch_url, signer.mint("alice", "p"))
    await alice.connect()
    blocker = sqlite3.connect(cluster.data_dir / "chatplane.db", isolation_level=None)
    try:
        conv = await alice.direct("bob")
        blocker.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
        sending = asyncio.ensure_future(alice.send_text(conv, "held up"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            status, body = await asyncio.to_thread(readyz, cluster.members["im-1"].url)
            if status == 503:
                break
            assert loop.time() < deadline, body
            await asyncio.sleep(0.1)
        (problem,) = body["problems"]  # type: ignore[misc]
        assert problem.startswith("storage writer wedged: oldest job ")
        # the other tiers are fine and say so
        assert (await asyncio.to_thread(readyz, cluster.members["gw-1"].url))[0] == 200
        blocker.execute("ROLLBACK")
        assert (await asyncio.wait_for(sending, 30)).seq == 1
        deadline = loop.time() + 10
        while (await asyncio.to_thread(readyz, cluster.members["im-1"].url))[0] != 200:
            assert loop.time() < deadline
            await asyncio.sleep(0.1)
    finally:
        blocker.close()
        await alice.close()
