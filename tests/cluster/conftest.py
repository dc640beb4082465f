"""A real `cluster up` deployment per test (separate processes on loopback,
the session's real redis-server), and chat traffic judged per device by the
delivery checker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from chatplane.cluster import Cluster
from tests.services import RedisService
from tests.support.traffic import Device, send_many

# Short timers so failures are noticed and repaired within test time.
FAST = {
    "CHATPLANE_REGISTRY_TTL_S": "2",
    "CHATPLANE_HEAD_CHECK_S": "1",
    "CHATPLANE_RPC_DEADLINE_S": "1",
    "CHATPLANE_SQLITE_SYNCHRONOUS": "NORMAL",  # survives kill -9 of a process
    "CHATPLANE_RECONNECT_DELAY_MS": "100",
}

ClusterFactory = Callable[..., Cluster]


@pytest.fixture
async def client(redis_server: RedisService) -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis, emptied first."""
    r = aioredis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=5)
    await r.flushall()
    yield r
    await r.aclose()


@pytest.fixture
def make_cluster(tmp_path: Path, redis_server: RedisService) -> Iterator[ClusterFactory]:
    started: list[Cluster] = []

    def make(**kwargs: object) -> Cluster:
        client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
        client.flushall()  # nothing left from an earlier test's cluster
        client.close()
        env = {**FAST, **kwargs.pop("env", {})}  # type: ignore[dict-item]
        cluster = Cluster(tmp_path / f"cluster{len(started)}", redis_url=redis_server.url,
                          env=env, **kwargs)  # type: ignore[arg-type]
        started.append(cluster)
        cluster.start(timeout_s=60)
        return cluster

    yield make
    for cluster in started:
        cluster.stop()


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.load(response))


def connections(cluster: Cluster, name: str) -> int:
    return int(get_json(cluster.members[name].admin_url + "/admin/drain")["connections"])  # type: ignore[call-overload]


async def connect_spread(cluster: Cluster, make: Callable[[], Client],
                         timeout_s: float = 30.0) -> Client:
    """A client from `make`, connected through dispatch to a gateway that has
    the fewest connections, for tests whose devices must be on every gateway.
    Dispatch places a client before its first login at random, and away from
    a gateway whose CPU reads busier (a machine's load, or the gateway's own
    first logins, can do that for a second): so a client that lands where
    enough are already is closed and a new one made (never a reconnect),
    until the deadline, after which it stays where it landed."""
    names = cluster.names("gateway")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def counts(total: int) -> dict[str, int]:
        """Connections per gateway, once they add up to `total` (a login is
        counted, a close is gone)."""
        while True:
            found = {g: connections(cluster, g) for g in names}
            if sum(found.values()) == total or loop.time() > deadline + 10:
                return found
            await asyncio.sleep(0.05)

    before = await counts(sum(connections(cluster, g) for g in names))
    while True:
        client = make()
        await client.connect()
        after = await counts(sum(before.values()) + 1)
        landed = [g for g in names if after[g] > before[g]]
        if (landed and before[landed[0]] == min(before.values())) or loop.time() > deadline:
            return client
        await client.close()
        await counts(sum(before.values()))


def metric(cluster: Cluster, name: str, metric_name: str) -> float:
    with urllib.request.urlopen(cluster.members[name].admin_url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(metric_name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} has no metric {metric_name}")


class Chat:
    """P pairs; each pair a 1:1 conversation; the second user of a pair has
    two devices. Every member device is watched by one checker."""

    def __init__(self) -> None:
        self.checker = DeliveryChecker()
        self.senders: list[tuple[Device, str]] = []
        self.devices: list[Device] = []
        self.seqs: dict[str, list[int]] = {}

    async def open(self, cluster: Cluster, pairs: int, tag: str) -> None:
        await self.open_at(cluster.dispatch_url, cluster.signer, pairs, tag)

    async def open_at(self, dispatch_url: str, signer: TokenSigner, pairs: int, tag: str,
                      ca: str | None = None) -> None:
        """`open` through any dispatch URL (`ca`: the CA a WSS gateway's certificate
        chains to)."""
        for i in range(pairs):
            a, b = f"{tag}a{i}", f"{tag}b{i}"
            made = []
            for user, device in ((a, "phone"), (b, "phone"), (b, "tablet")):
                client = Client(dispatch_url, signer.mint(user, device), ca=ca)
                await client.connect()
                d = Device(client, user, device, self.checker)
                d.start()
                made.append(d)
            conv = await made[0].client.direct(b)
            self.checker.add_member(conv, a)
            self.checker.add_member(conv, b)
            self.devices += made
            self.senders += [(made[0], conv), (made[1], conv)]
            self.seqs[conv] = []

    async def send(self, per_sender: int, prefix: str, in_flight: int = 5) -> None:
        async def one(device: Device, conv: str) -> None:
            self.seqs[conv] += await send_many(device, conv, per_sender, f"{prefix}{device.user}",
                                               in_flight=in_flight)

        await asyncio.gather(*(one(d, c) for d, c in self.senders))

    async def settle(self, timeout_s: float) -> None:
        """Wait until every device holds every acked message of its conversations."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            want = {conv: len(seqs) for conv, seqs in self.seqs.items()}
            behind = [d for d in self.devices
                      if sum(want[c] for c in want if d.user in c.split(":")) > len(d.received)]
            if not behind:
                break
            if loop.time() > deadline:
                raise AssertionError("not delivered in time: " + ", ".join(
                    f"{d.user}/{d.device}={len(d.received)}" for d in behind[:8]))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a duplicate would arrive now

    def assert_clean(self) -> None:
        for conv, seqs in self.seqs.items():
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"{conv}: seqs repeat or skip"
        verdict = self.checker.verdict()
        assert verdict.ok, verdict.summary() + str(verdict.to_dict()["failed_devices"])

    async def close(self) -> None:
        for d in self.devices:
            await d.stop()


def cluster_up_process(data_dir: Path, gateways: int, ims: int) -> subprocess.Popen[str]:
    """`chatplane cluster up` as a process (one state), its output on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "chatplane.cli", "cluster", "up", "--data-dir", str(data_dir),
         "--gateways", str(gateways), "--ims", str(ims), "--states", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
