"""Two `chatplane up --storage scylla` regions on one keyspace of two datacenters
(docs/architecture.md, "Regions on CQL"): real processes (two Cassandra nodes, `dc1`
and `dc2`, tests/services.py `TwoDatacenterCql`; eu on dc1, us on dc2, their region
link through a proxy that can cut it), SDK clients in both, the delivery checker.

The database copies the rows; the link carries forwarded sends and each home's
notices, from which the other region writes its own users' inbox entries and pushes
them to its devices: every device gets every message once, in one order, pushed
(no client reconnects, so no sync on reconnect brought them), also through a cut of
the link (the notice stream resumes from its cursor)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatplane.checker import DeliveryChecker
from tests.services import TwoDatacenterCql
from tests.support.proxy import ChaosProxy
from tests.support.regions import RegionProcess, metric, region_device, wait_for
from tests.support.traffic import Device, send_many

pytestmark = [pytest.mark.cql, pytest.mark.slow]


async def _migrate(cluster: TwoDatacenterCql, keyspace: str) -> None:
    """The keyspace with a replica in each datacenter (as `chatplane storage migrate
    --cql-replication dc1=1,dc2=1` makes it), with a long request timeout: the JVMs
    pause for seconds on this loaded machine."""
    from chatplane.storage import migrations
    from chatplane.storage.cql import CqlSettings

    settings = CqlSettings(hosts=("127.0.0.1",), port=cluster.port, keyspace=keyspace,
                           local_dc="dc1", request_timeout_s=60.0,
                           replication={"class": "NetworkTopologyStrategy", "dc1": "1",
                                        "dc2": "1"})
    await migrations.migrate(settings)


class Link:
    """eu and us, each dialing the other through its own proxy."""

    def __init__(self, eu: RegionProcess, us: RegionProcess, cluster: TwoDatacenterCql,
                 keyspace: str) -> None:
        self.eu_us = ChaosProxy("127.0.0.1", us.grpc_port)
        self.us_eu = ChaosProxy("127.0.0.1", eu.grpc_port)
        self.cluster, self.keyspace = cluster, keyspace

    def cut(self) -> None:
        self.eu_us.block()
        self.us_eu.block()

    def heal(self) -> None:
        self.eu_us.unblock()
        self.us_eu.unblock()


@pytest.fixture
async def regions(two_dc: TwoDatacenterCql, tmp_path: Path,
                  ) -> AsyncIterator[tuple[RegionProcess, RegionProcess, Link]]:
    keyspace = f"r_{uuid.uuid4().hex[:12]}"
    await _migrate(two_dc, keyspace)
    made = {}
    for name, (dc, address) in zip(("eu", "us"), two_dc.DATACENTERS, strict=True):
        made[name] = RegionProcess(tmp_path / name, name, env={
            "CHATPLANE_STORAGE": "scylla", "CHATPLANE_CQL_HOSTS": f"{address}:{two_dc.port}",
            "CHATPLANE_KEYSPACE": keyspace, "CHATPLANE_CQL_DATACENTER": dc,
            "CHATPLANE_CQL_WRITE_CONSISTENCY": "EACH_QUORUM",
            "CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"})  # members added, not invited
    eu, us = made["eu"], made["us"]
    link = Link(eu, us, two_dc, keyspace)
    for proxy in (link.eu_us, link.us_eu):
        await proxy.start()
    eu.set_peers([{"name": "us", "endpoint": f"127.0.0.1:{link.eu_us.port}"}])
    us.set_peers([{"name": "eu", "endpoint": f"127.0.0.1:{link.us_eu.port}"}])
    try:
        await asyncio.gather(asyncio.to_thread(eu.start, 90), asyncio.to_thread(us.start, 90))
        yield eu, us, link
    finally:
        for region in (eu, us):
            if region.proc is not None and region.proc.poll() is None:
                os.kill(region.proc.pid, signal.SIGCONT)
            await asyncio.to_thread(region.stop)
        for proxy in (link.eu_us, link.us_eu):
            await proxy.stop()


async def _until_received(devices: list[Device], expected: dict[str, dict[str, int]],
                          timeout_s: float, *, changes: bool = False) -> None:
    """Until each device holds the expected number of chat messages per conversation
    (the group's own change messages not counted; `changes`: at least one of those)."""
    def count(device: Device, conversation: str) -> int:
        return sum(1 for m in device.received if m.conversation_id == conversation
                   and m.content_type.startswith("system/") == changes)

    def short() -> list[str]:
        return [f"{d.user}: {conversation} {have}/{want}" for d in devices
                for conversation, want in expected[d.user].items()
                if (have := count(d, conversation)) < max(want, int(changes))]

    deadline = asyncio.get_running_loop().time() + timeout_s
    while missing := short():
        assert asyncio.get_running_loop().time() < deadline, f"not received: {missing}"
        await asyncio.sleep(0.1)


async def _inboxes(link: Link, dc: str, users: list[str],
                   conversations: list[str]) -> tuple[dict[str, list[tuple[str, int]]],
                                                      dict[str, int]]:
    """Each user's inbox entries (conversation, seq) in inbox_seq order, as datacenter
    `dc` holds them, and the conversations' heads there."""
    from chatplane.storage.cql import CqlSettings
    from chatplane.storage.scylla import ScyllaStorage

    store = ScyllaStorage(CqlSettings(hosts=(dict(link.cluster.DATACENTERS)[dc],),
                                      port=link.cluster.port, keyspace=link.keyspace,
                                      local_dc=dc, request_timeout_s=60.0))
    await store.open()
    try:
        inboxes = {}
        for user in users:
            items = await store.inbox(user, 0, 1000)
            assert [i.inbox_seq for i in items] == list(range(1, len(items) + 1)), user
            inboxes[user] = [(i.message.conversation_id, i.message.seq) for i in items]
        heads = {}
        for conversation in conversations:
            found = await store.conversation(conversation)
            assert found is not None
            heads[conversation] = found.head_seq
        return inboxes, heads
    finally:
        await store.close()


def _notices(region: RegionProcess, peer: str) -> dict[str, Any]:
    view: dict[str, Any] = region.peers()[peer]["replication"]
    return view


async def test_chats_across_two_datacenters_are_pushed_once_in_order_through_a_cut(
    regions: tuple[RegionProcess, RegionProcess, Link],
) -> None:
    """alice and dave log in at eu (homed there), bob and carol at us: a 1:1 chat
    alice-bob homed in eu (alice's first send) and a group of all four made in us;
    everyone sends into both from both regions, the link is cut for 2 s meanwhile."""
    eu, us, link = regions
    checker = DeliveryChecker()
    devices: list[Device] = []
    try:
        for region, user in ((eu, "alice"), (eu, "dave"), (us, "bob"), (us, "carol")):
            devices.append(await region_device(region, user, "d", checker, timeout_s=30,
                                               defer=True))
        alice, _dave, bob, carol = devices
        direct = await alice.client.direct("bob")
        assert await bob.client.direct("alice") == direct
        for user in ("alice", "bob"):
            checker.add_member(direct, user)
        group = await carol.client.create_group("four", ["alice", "bob", "dave"])
        for user in ("alice", "bob", "carol", "dave"):
            checker.add_member(group, user)
        # every member is pushed the group's creation (eu's from us's notice) before
        # sending: eu reads the group's rows from dc1 once Cassandra copied them
        await _until_received(devices, {d.user: {group: 0} for d in devices}, 30,
                              changes=True)
        await send_many(alice, direct, 1, "first")  # homes the 1:1 chat in eu
        await send_many(carol, group, 1, "first")

        async def traffic(prefix: str, count: int) -> None:
            await asyncio.wait_for(asyncio.gather(
                send_many(alice, direct, count, f"a-{prefix}", in_flight=3),
                send_many(bob, direct, count, f"b-{prefix}", in_flight=3),
                *(send_many(d, group, count, f"{d.user}-{prefix}", in_flight=3)
                  for d in devices)), 60)

        await traffic("before", 10)
        cutting = asyncio.ensure_future(traffic("cut", 15))
        await asyncio.sleep(0.3)
        link.cut()
        await asyncio.sleep(2.0)
        link.heal()
        await cutting
        direct_total, group_total = 1 + 2 * 25, 1 + 4 * 25
        expected = {"alice": {direct: direct_total, group: group_total},
                    "bob": {direct: direct_total, group: group_total},
                    "carol": {group: group_total}, "dave": {group: group_total}}
        await _until_received(devices, expected, 60)
        for device in devices:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == direct_total + group_total and verdict.ok, verdict.summary()
        for conversation in (direct, group):
            orders = {tuple(d.order(conversation)) for d in devices if d.order(conversation)}
            assert len(orders) == 1, f"{conversation}: two orders"
        # pushed: no client reconnected (a reconnect's sync would have brought them)
        assert [d.client.reconnects for d in devices] == [0, 0, 0, 0]
        # bob's sends were forwarded to the 1:1 chat's home; each region wrote its own
        # users' entries of the other's messages from the notices, and caught up
        # (one forwarded ack per send: a resend after a cut reply is answered once)
        assert metric(us, "chatplane_region_sends_forwarded_total") == 25  # bob's 1:1
        assert metric(eu, "chatplane_region_sends_forwarded_total") == 50  # alice's, dave's
        assert metric(eu, "chatplane_region_sends_served_total") >= 25
        assert metric(us, "chatplane_region_notice_entries_written_total", "eu") > 0
        assert metric(eu, "chatplane_region_notice_entries_written_total", "us") > 0
        for region, peer in ((us, "eu"), (eu, "us")):
            view = wait_for(lambda r=region, p=peer: (v := _notices(r, p))["lag"] == 0
                            and v["connected"] and v, 15, "caught up")
            assert view["mode"] == "notices" and view["lost"] == 0
            assert view["reconnects"] >= 1  # the cut reopened the stream from its cursor
            print(f"{region.name} following {peer}: {view}")
        # every user's inbox, in its home's datacenter, names every message of its chats
        # once, in seq order (the other region's messages' entries from the notices)
        for dc, users in (("dc1", ["alice", "dave"]), ("dc2", ["bob", "carol"])):
            inboxes, heads = await _inboxes(link, dc, users, [direct, group])
            for user in users:
                chats = [direct, group] if user in ("alice", "bob") else [group]
                for conversation in chats:
                    seqs = [seq for c, seq in inboxes[user] if c == conversation]
                    wrong = [(i, seq) for i, seq in enumerate(seqs, 1) if seq != i][:5]
                    assert seqs == list(range(1, heads[conversation] + 1)), (
                        f"{user}'s inbox in {dc}, {conversation}: missing"
                        f" {sorted(set(range(1, heads[conversation] + 1)) - set(seqs))},"
                        f" out of order or twice {wrong}")
        # history from the other region's datacenter: the same rows
        history = await bob.client.history(direct, limit=200)
        assert [m.seq for m in history] == list(range(1, direct_total + 1))
    except BaseException:
        for region in (eu, us):
            print(f"--- {region.name}", *region.output[-80:], sep="\n")
            print(region.get("/v1/peers"))
        raise
    finally:
        for device in devices:
            await device.stop()
    assert any("failover is off on a shared CQL keyspace" in line for line in eu.output)


def test_sync_on_a_shared_keyspace_needs_each_quorum(tmp_path: Path) -> None:
    """`sync` acks a message once it is written in every datacenter: `up` with peers on
    CQL refuses, in one line, a write level that does not say so (before any storage)."""
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path), "--port", "0",
         "--storage", "scylla", "--cql-hosts", "127.0.0.1:1", "--region", "eu", "--peers",
         '[{"name": "us", "endpoint": "127.0.0.1:1"}]'],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CHATPLANE_CQL_WRITE_CONSISTENCY": "LOCAL_QUORUM"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "CHATPLANE_CQL_WRITE_CONSISTENCY=EACH_QUORUM" in result.stderr
