"""A cluster per region on one CQL keyspace of two datacenters (docs/cluster.md,
"Regions on CQL"): eu on dc1, us on dc2 (tests/services.py `two_dc`), each a `chatplane
cluster up` deployment on loopback (1 gateway, 2 ims, 1 state, its own redis-server),
peered through proxies that can cut the link. Users homed in both regions with
devices in both; a 1:1 chat homed in eu and a group homed in us, everyone sending into
both. Mid-traffic the link is cut and healed, then the eu im that follows us's notices
is killed with kill -9: the other eu im takes the following over from the cursor in
eu's Redis. Then every device got every acked message exactly once and in one order
(the checker), and both datacenters hold the same inbox entries, seq for seq."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatplane.cluster import Cluster
from chatplane.storage.base import StorageUnavailable
from tests.cluster.conftest import FAST
from tests.regions.test_cluster_regions_e2e import (
    DEVICES,
    ENV,
    SENDS,
    Traffic,
    conversations_of,
)
from tests.regions.test_cql_regions_e2e import _migrate
from tests.services import TwoDatacenterCql
from tests.support.proxy import ChaosProxy
from tests.support.regions import wait_for
from tests.support.traffic import Device

# the first test of a worker to ask for `two_dc` waits for the pair of JVMs too (~85 s
# quiet, minutes on a loaded machine), on top of two clusters and ~40 s of traffic
pytestmark = [pytest.mark.cql, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(900)]


class Region:
    """One region: its cluster on its datacenter, the proxies its peer dials (one per im)."""

    def __init__(self, base: Path, name: str, dc: str, address: str, port: int,
                 keyspace: str) -> None:
        self.name, self.dc = name, dc
        self.cluster = Cluster(base / name, gateways=1, ims=2, states=1, storage="scylla",
                               env={**ENV, **FAST, "CHATPLANE_REGION": name,
                                    "CHATPLANE_REGION_DURABILITY": "sync",
                                    "CHATPLANE_CQL_HOSTS": f"{address}:{port}",
                                    "CHATPLANE_KEYSPACE": keyspace,
                                    "CHATPLANE_CQL_DATACENTER": dc,
                                    "CHATPLANE_CQL_WRITE_CONSISTENCY": "EACH_QUORUM",
                                    # a group's placement is a SERIAL round across the
                                    # datacenters: past FAST's 1 s on this loaded machine,
                                    # the gateway would ask the next im to make another
                                    "CHATPLANE_RPC_DEADLINE_S": "5"})
        self.proxies = [ChaosProxy("127.0.0.1", self.cluster.members[im].grpc_port)
                        for im in self.cluster.names("im")]

    @property
    def endpoint(self) -> str:
        return ",".join(f"127.0.0.1:{p.port}" for p in self.proxies)

    def peers(self, im: str) -> dict[str, Any]:
        url = self.cluster.members[im].admin_url + "/v1/peers"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.load(resp))

    def following(self) -> list[str]:
        """The live ims that say they follow the peer's notices."""
        return [im for im in self.cluster.names("im") if self.cluster.members[im].alive
                and self.peers(im)["jobs"]["here"]]

    async def follower(self, what: str) -> str:
        found = await asyncio.to_thread(
            wait_for, lambda: (lambda at: at if len(at) == 1 else None)(self.following()),
            30, what)
        return str(found[0])


@contextlib.asynccontextmanager
async def peered(base: Path, two_dc: TwoDatacenterCql) -> AsyncIterator[tuple[Region, Region]]:
    keyspace = f"c_{uuid.uuid4().hex[:12]}"
    for attempt in range(3):  # a pair just started may time a Paxos round out
        try:
            await _migrate(two_dc, keyspace)
            break
        except StorageUnavailable:
            if attempt == 2:
                raise
            await asyncio.sleep(5)
    (dc1, a1), (dc2, a2) = two_dc.DATACENTERS
    eu = Region(base, "eu", dc1, a1, two_dc.port, keyspace)
    us = Region(base, "us", dc2, a2, two_dc.port, keyspace)
    for proxy in [*eu.proxies, *us.proxies]:
        await proxy.start()
    for me, other in ((eu, us), (us, eu)):
        me.cluster.extra_env["CHATPLANE_PEERS"] = json.dumps(
            [{"name": other.name, "endpoint": other.endpoint}])
    try:
        await asyncio.gather(asyncio.to_thread(eu.cluster.start, 120),
                             asyncio.to_thread(us.cluster.start, 120))
        for region in (eu, us):
            for proxy, im in zip(region.proxies, region.cluster.names("im"), strict=True):
                proxy.target = ("127.0.0.1", region.cluster.members[im].grpc_port)
        yield eu, us
    finally:
        for region in (eu, us):
            await asyncio.to_thread(region.cluster.stop)
            for proxy in region.proxies:
                await proxy.stop()


def cut(eu: Region, us: Region) -> None:
    for proxy in [*eu.proxies, *us.proxies]:
        proxy.block()


def heal(eu: Region, us: Region) -> None:
    for proxy in [*eu.proxies, *us.proxies]:
        proxy.unblock()


async def _store(two_dc: TwoDatacenterCql, dc: str, keyspace: str) -> Any:
    from chatplane.storage.cql import CqlSettings
    from chatplane.storage.scylla import ScyllaStorage

    store = ScyllaStorage(CqlSettings(hosts=(dict(two_dc.DATACENTERS)[dc],), port=two_dc.port,
                                      keyspace=keyspace, local_dc=dc, request_timeout_s=60.0))
    await store.open()
    return store


async def _homes(two_dc: TwoDatacenterCql, keyspace: str, kind: str,
                 keys: list[str]) -> dict[str, str]:
    store = await _store(two_dc, "dc1", keyspace)
    try:
        rows = {key: await store.home(kind, key) for key in keys}
        return {key: row.region for key, row in rows.items() if row is not None and row.confirmed}
    finally:
        await store.close()


async def _inboxes(two_dc: TwoDatacenterCql, dc: str, keyspace: str,
                   conversations: list[str]) -> dict[str, list[tuple[int, str, int]]]:
    """Each user's inbox entries (inbox_seq, conversation, seq) of the conversations, as
    datacenter `dc` holds them."""
    store = await _store(two_dc, dc, keyspace)
    try:
        return {user: [(i.inbox_seq, i.message.conversation_id, i.message.seq)
                       for i in await store.inbox(user, 0, 2000)
                       if i.message.conversation_id in conversations] for user in DEVICES}
    finally:
        await store.close()


async def test_two_clusters_on_two_datacenters_through_a_cut_and_a_kill_of_the_follower(
        tmp_path: Path, two_dc: TwoDatacenterCql) -> None:
    async with peered(tmp_path, two_dc) as (eu, us):
        keyspace = eu.cluster.extra_env["CHATPLANE_KEYSPACE"]
        traffic = Traffic({"eu": eu, "us": us})  # type: ignore[dict-item]
        try:
            for user, where in DEVICES.items():  # the first device logs in at home
                await traffic.connect(user, where[0])
            want = {user: where[0] for user, where in DEVICES.items()}
            for _ in range(300):
                if await _homes(two_dc, keyspace, "user", list(want)) == want:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the users' homes")
            for user, where in DEVICES.items():
                for region in where[1:]:
                    await traffic.connect(user, region)
            ann, bob = traffic.device("ann", "eu"), traffic.device("bob", "us")
            chat = await ann.client.direct("bob")
            assert await bob.client.direct("ann") == chat
            await traffic.send(ann, chat, "first")  # homes the chat in eu
            group = await bob.client.create_group("four", ["ann", "cat", "dan"])
            for user in ("ann", "bob"):
                traffic.checker.add_member(chat, user)
            for user in DEVICES:
                traffic.checker.add_member(group, user)
            assert await _homes(two_dc, keyspace, "conversation", [chat, group]) == {
                chat: "eu", group: "us"}
            await asyncio.sleep(1.0)  # the group's rows copied to dc1 before eu sends
            victim = await eu.follower("eu's notice follower")
            await us.follower("us's notice follower")

            began = time.monotonic()
            senders = [asyncio.ensure_future(traffic.run(d, conversations_of(d, chat, group)))
                       for d in traffic.devices]
            total = sum(SENDS * len(conversations_of(d, chat, group)) for d in traffic.devices)
            await traffic.until_acks(total // 5, 60)
            cut(eu, us)  # forwarded sends fail and are resent, notice streams reopen
            at_cut = traffic.acks
            await asyncio.sleep(1.5)
            heal(eu, us)
            await traffic.until_acks(traffic.acks + 20, 60)
            assert traffic.acks > at_cut
            # kill -9 of the eu im following us's notices: the other takes it over
            await asyncio.to_thread(eu.cluster.kill, victim)
            at_kill = traffic.acks
            survivor = await asyncio.to_thread(wait_for, eu.following, 30,
                                               "eu's following moved")
            assert survivor != [victim], survivor
            done, stuck = await asyncio.wait(senders, timeout=120)
            assert not stuck, f"{len(stuck)} devices still sending"
            for sender in done:
                sender.result()
            assert traffic.acks == total + 1 and traffic.acks > at_kill

            # every device: every message of its conversations once, in one order
            want_of = {d.device: sum(traffic.acked[c] for c in conversations_of(d, chat, group))
                       for d in traffic.devices}

            def got(device: Device) -> int:
                return sum(1 for m in device.received if m.conversation_id in (chat, group))

            try:
                await asyncio.to_thread(wait_for, lambda: all(
                    got(d) >= want_of[d.device] for d in traffic.devices), 60,
                    "every device got every message")
            finally:
                print({d.device: (got(d), want_of[d.device]) for d in traffic.devices})
            await asyncio.sleep(0.5)  # a second copy of anything would come now
            for device in traffic.devices:
                device.judge()
            verdict = traffic.checker.verdict()
            assert verdict.ok and verdict.acked == total + 1, verdict.summary()
            for conversation in (chat, group):
                orders = {tuple(d.order(conversation)) for d in traffic.devices
                          if d.order(conversation)}
                assert len(orders) == 1, conversation

            # both datacenters: the same inbox entries, every message once, in seq order
            expected = {chat: traffic.acked[chat], group: traffic.acked[group]}
            for _ in range(100):
                dc1 = await _inboxes(two_dc, "dc1", keyspace, list(expected))
                dc2 = await _inboxes(two_dc, "dc2", keyspace, list(expected))
                if dc1 == dc2:
                    break
                await asyncio.sleep(0.2)
            assert dc1 == dc2
            late = 0  # entries after a later seq's (a late notice: docs/cluster.md)
            for user, entries in dc1.items():
                mine = [c for c in expected if c == group or user in ("ann", "bob")]
                for conversation in mine:
                    seqs = [s for _, c, s in entries if c == conversation]
                    assert sorted(seqs) == list(range(1, expected[conversation] + 1)), (
                        user, conversation, seqs[:10])  # every message once
                    late += sum(1 for a, b in itertools.pairwise(seqs) if b < a)
                assert [n for n, _, _ in entries] == sorted({n for n, _, _ in entries}), user
            views = {im: eu.peers(im)["peers"][0].get("replication", {})
                     for im in survivor}
            print(f"\ncql cluster regions: {traffic.acks} acked in"
                  f" {time.monotonic() - began:.1f} s, following {victim} -> {survivor[0]},"
                  f" {sum(d.client.send_retries for d in traffic.devices)} resends, {late} late"
                  f" inbox entries; {views}")
        finally:
            for device in traffic.devices:
                await device.stop()
