"""Regions with a cluster per region (docs/cluster.md, "Regions"): eu and us, each a
`chatplane cluster up` deployment on loopback (1 gateway, 2 im on one shared SQLite
file, 1 state, its own redis-server), peered through proxies that can cut the link.
Users homed in both regions, with devices in both; a 1:1 chat homed in eu and a group
homed in us, everyone sending into both. Mid-traffic the cross-region link is cut and
healed, then the eu im that runs the region's jobs (the pullers of us's log) is killed
with kill -9: the other eu im takes them over. Then every device got every acked
message exactly once and in one order (the delivery checker), and both regions' stores
hold the same messages seq for seq and the same inbox entries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from chatplane.cluster import Cluster
from chatplane.im.regionjobs import jobs_key
from chatplane.im.sequencing import keyed_group_id
from chatplane.registry.ring import HashRing, ring_key
from chatplane.v1 import frames_pb2 as pb
from tests.cluster.conftest import FAST
from tests.support.proxy import ChaosProxy
from tests.support.regions import FAST_PROBES, SHARED_KEY, wait_for
from tests.support.traffic import Device

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ENV = {**FAST, **FAST_PROBES, "CHATPLANE_TOKEN_SECRET": SHARED_KEY,
       "CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}
# user -> its home region (its first device logs in there) and where its devices are
DEVICES = {"ann": ["eu", "us"], "bob": ["us", "eu"], "cat": ["eu"], "dan": ["us"]}
SENDS = 30  # per device and conversation, one in flight per device
PAUSE_S = 0.05  # between a device's sends: the traffic spans the cut and the kill
READ_BACK_S = 0.8  # a forwarded friend change, read back (the im's deadline is 1 s)
QUICK_S = 2.0  # a send once all is settled: acked well within the sync timeout (3 s)


def conversations_of(device: Device, chat: str, group: str) -> list[str]:
    """What a device sends into: ann and bob their chat and the group, the others the
    group."""
    return [chat, group] if device.user in ("ann", "bob") else [group]


class Region:
    """One region: its cluster and the proxies its peer dials it through (one per im)."""

    def __init__(self, base: Path, name: str, durability: str) -> None:
        self.name = name
        self.cluster = Cluster(base / name, gateways=1, ims=2, states=1, env={
            **ENV, "CHATPLANE_REGION": name, "CHATPLANE_REGION_DURABILITY": durability})
        self.proxies = [ChaosProxy("127.0.0.1", self.cluster.members[im].grpc_port)
                        for im in self.cluster.names("im")]

    @property
    def endpoint(self) -> str:
        return ",".join(f"127.0.0.1:{p.port}" for p in self.proxies)

    def peers(self, im: str) -> dict[str, Any]:
        """What one im reports on `/v1/peers`."""
        url = self.cluster.members[im].admin_url + "/v1/peers"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.load(resp))

    def jobs_at(self) -> list[str]:
        """The live ims that say they run the region's jobs."""
        return [im for im in self.cluster.names("im") if self.cluster.members[im].alive
                and self.peers(im)["jobs"]["here"]]

    def jobs_owner(self) -> str | None:
        """The im the ring of the live ims gives the region's jobs (im/regionjobs.py)."""
        live = [im for im in self.cluster.names("im") if self.cluster.members[im].alive]
        return HashRing(live).owner(ring_key(jobs_key(self.name)))

    async def jobs_im(self, what: str) -> str:
        """The im that runs the region's jobs once they are where the ring of the live
        ims puts them, and on no other. (One im found running them is not enough: after
        a start or a restart of the ring's owner, the im that ran them meanwhile may
        still run them for a second or so, alone, before it sees the owner and hands them
        back.)"""
        found = await asyncio.to_thread(
            wait_for, lambda: (lambda at: at if at == [self.jobs_owner()] else None)(
                self.jobs_at()), 20, what)
        return str(found[0])

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.cluster.data_dir / 'chatplane.db'}?mode=ro",
                               uri=True)


@contextlib.asynccontextmanager
async def peered(base: Path, durability: str) -> AsyncIterator[tuple[Region, Region]]:
    eu, us = Region(base, "eu", durability), Region(base, "us", durability)
    for proxy in [*eu.proxies, *us.proxies]:
        await proxy.start()
    for me, other in ((eu, us), (us, eu)):
        me.cluster.extra_env["CHATPLANE_PEERS"] = json.dumps(
            [{"name": other.name, "endpoint": other.endpoint}])
    try:
        await asyncio.gather(asyncio.to_thread(eu.cluster.start),
                             asyncio.to_thread(us.cluster.start))
        for region in (eu, us):  # (a member whose port was taken meanwhile got another)
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


def homes(region: Region, kind: str) -> dict[str, str]:
    db = region.db()
    try:
        return {str(k): str(r) for k, r in db.execute(
            "SELECT key, region FROM homes WHERE kind = ? AND confirmed", (kind,))}
    finally:
        db.close()


def stored(region: Region, conversations: list[str]) -> tuple[
        dict[str, list[tuple[int, str]]], dict[str, list[tuple[int, str, int]]]]:
    """Each conversation's (seq, message_id), each user's inbox (inbox_seq, conversation,
    seq) for those conversations."""
    db = region.db()
    try:
        marks = ",".join("?" * len(conversations))
        messages = {c: [(int(s), str(m)) for s, m in db.execute(
            "SELECT seq, message_id FROM messages WHERE conversation_id = ? ORDER BY seq",
            (c,))] for c in conversations}
        inboxes = {u: [(int(n), str(c), int(s)) for n, c, s in db.execute(
            f"SELECT inbox_seq, conversation_id, seq FROM inbox WHERE user_id = ?"
            f" AND conversation_id IN ({marks}) ORDER BY inbox_seq", (u, *conversations))]
            for u in DEVICES}
        return messages, inboxes
    finally:
        db.close()


async def friend_request_read_back(us: Region) -> None:
    """A friend request made in us of a pair decided in eu (the first name's home,
    regions/social.py) is forwarded there and read back at once in us (the change
    applied here first), by a user the ring routes to the us im that does not run the
    pullers: every im knows how far eu's log is applied in us (im/regionjobs.py,
    `follow_cursors`). "At once": before the gateway's deadline (1 s) would try the
    next im."""
    jobs = await us.jobs_im("us's jobs im")
    ims = us.cluster.names("im")
    elsewhere = next(im for im in ims if im != jobs)
    asker = next(u for u in (f"fay{i}" for i in range(1000))
                 if HashRing(ims).owner(u) == elsewhere)  # its requests go there
    client = Client(us.cluster.dispatch_url, TokenSigner(SHARED_KEY).mint(asker, "phone"),
                    request_timeout_s=30)
    await client.connect(timeout_s=30)
    try:
        await asyncio.to_thread(wait_for, lambda: homes(us, "user").get(asker) == "us", 20,
                                f"{asker}'s home")
        started = time.monotonic()
        await client.add_friend("ann")
        took = time.monotonic() - started
        requests = await client.friend_requests()
        assert [r.user_id for r in requests["outgoing"]] == ["ann"], requests
        assert took < READ_BACK_S, f"{asker} -> ann: {took:.2f} s"
    finally:
        await client.close()


async def a_member_added_in_us_sends_in_eu(eu: Region, us: Region, traffic: Traffic) -> None:
    """A group homed in us whose member list an eu im cached (its owner on eu's ring,
    not the im applying us's log, which forgets what it applies): its maker adds cat in
    us, and once the change is applied in eu, cat's send from eu is taken there and
    forwarded to the home (a member missing from a cached list is looked up again).

    A new group's id is derived from its create's key (im/sequencing.py,
    `keyed_group_id`): so the create's cid is one whose group id eu's ring does not
    give to eu's jobs im (bob's is the im the ring gives eu's jobs, once they are
    back on the restarted im)."""
    jobs = await eu.jobs_im("eu's jobs back on the restarted im")
    ring = HashRing(eu.cluster.names("im"))
    maker_id = next(u for u in (f"gus{i}" for i in range(1000))
                    if HashRing(us.cluster.names("im")).owner(u) != jobs)
    maker = Client(us.cluster.dispatch_url, TokenSigner(SHARED_KEY).mint(maker_id, "phone"),
                   request_timeout_s=30)
    await maker.connect(timeout_s=30)
    try:
        for region in (eu, us):
            await asyncio.to_thread(wait_for, lambda r=region: (  # type: ignore[misc]
                homes(r, "user").get(maker_id) == "us"), 20,
                f"{maker_id}'s home in {region.name}'s store")
        cid = next(c for c in range(1, 1000)
                   if ring.owner(ring_key(keyed_group_id(maker_id, "phone", c, "us"))) != jobs)
        late = (await maker._request(pb.Frame(group_create=pb.GroupCreate(
            name="late", members=["bob", "dan"], cid=cid)))).group_op_ack.conversation_id
        assert ring.owner(ring_key(late)) != jobs, (late, jobs)
        await asyncio.to_thread(wait_for, lambda: bool(stored(eu, [late])[0][late]), 20,
                                "the group in eu")
        # the eu owner caches its members
        await traffic.device("bob", "eu").client.send_text(late, "from eu")
        await maker.add_members(late, ["cat"])

        def cat_in_eu() -> bool:
            db = eu.db()
            try:
                return db.execute("SELECT 1 FROM members WHERE conversation_id = ? AND"
                                  " user_id = 'cat'", (late,)).fetchone() is not None
            finally:
                db.close()

        await asyncio.to_thread(wait_for, cat_in_eu, 20, "cat a member in eu's store")
        ack = await traffic.device("cat", "eu").client.send_text(late, "cat from eu")
        assert ack.seq > 0
    finally:
        await maker.close()


class Traffic:
    def __init__(self, regions: dict[str, Region]) -> None:
        self.regions = regions
        self.checker = DeliveryChecker()
        self.devices: list[Device] = []
        self.acked: dict[str, int] = {}  # conversation -> highest acked seq
        self.acks = 0

    async def connect(self, user: str, region: str) -> Device:
        name = f"{user}-{region}"
        client = Client(self.regions[region].cluster.dispatch_url,
                        TokenSigner(SHARED_KEY).mint(user, name), request_timeout_s=30)
        await client.connect(timeout_s=30)
        device = Device(client, user, name, self.checker, defer=True)  # judged at the end
        device.start()
        self.devices.append(device)
        return device

    def device(self, user: str, region: str) -> Device:
        return next(d for d in self.devices if d.device == f"{user}-{region}")

    async def send(self, device: Device, conversation: str, text: str) -> None:
        ack = await device.client.send_text(conversation, text)
        self.checker.record_ack(device.user, device.device, ack.conversation_id, ack.seq,
                                ack.message_id, cid=ack.cid)
        self.acked[conversation] = max(self.acked.get(conversation, 0), ack.seq)
        self.acks += 1

    async def run(self, device: Device, conversations: list[str]) -> None:
        for i in range(SENDS):
            for conversation in conversations:
                await self.send(device, conversation, f"{device.device}-{i}")
            await asyncio.sleep(PAUSE_S)

    async def until_acks(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acks < count:
            assert time.monotonic() < deadline, f"{self.acks} acks, waiting for {count}"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("durability", ["sync", "async"])
async def test_two_clusters_chat_through_a_cut_and_a_kill_of_the_pullers_im(
        tmp_path: Path, durability: str) -> None:
    """In `sync` (the default) an ack waits for the other region to apply the message,
    whichever of its ims hears the confirmation; in `async` it does not."""
    async with peered(tmp_path, durability) as (eu, us):
        traffic = Traffic({"eu": eu, "us": us})
        try:
            # each user's first device logs in at home, which places the user's home there
            for user, where in DEVICES.items():
                await traffic.connect(user, where[0])
            want = {user: where[0] for user, where in DEVICES.items()}
            for region in (eu, us):
                await asyncio.to_thread(wait_for, lambda r=region: all(  # type: ignore[misc]
                    homes(r, "user").get(u) == h for u, h in want.items()), 20,
                    f"the users' homes in {region.name}'s store")
            for user, where in DEVICES.items():
                for region in where[1:]:
                    await traffic.connect(user, region)
            await friend_request_read_back(us)
            # a 1:1 chat opened and first written in eu (homed there), a group made in us
            ann, bob = traffic.device("ann", "eu"), traffic.device("bob", "us")
            chat = await ann.client.direct("bob")
            assert await bob.client.direct("ann") == chat
            await traffic.send(ann, chat, "first")
            group = await bob.client.create_group("four", ["ann", "cat", "dan"])
            for user in ("ann", "bob"):
                traffic.checker.add_member(chat, user)
            for user in DEVICES:
                traffic.checker.add_member(group, user)
            for region in (eu, us):
                await asyncio.to_thread(wait_for, lambda r=region: (  # type: ignore[misc]
                    homes(r, "conversation").get(chat) == "eu"
                    and homes(r, "conversation").get(group) == "us"), 20,
                    f"the conversations' homes in {region.name}'s store")
                # the group reached eu before anyone sends into it there
                await asyncio.to_thread(wait_for, lambda r=region: bool(  # type: ignore[misc]
                    stored(r, [group])[0][group]), 20, f"the group in {region.name}")
            victim = await eu.jobs_im("eu's jobs im")

            began = time.monotonic()
            senders = [asyncio.ensure_future(traffic.run(d, conversations_of(d, chat, group)))
                       for d in traffic.devices]
            total = sum(SENDS * len(conversations_of(d, chat, group)) for d in traffic.devices)
            # a cut of the cross-region link, mid-traffic: forwarded sends fail and are
            # resent, the pullers reconnect once it heals
            await traffic.until_acks(total // 5, 30)
            cut(eu, us)
            at_cut = traffic.acks
            await asyncio.sleep(1.5)
            heal(eu, us)
            await traffic.until_acks(traffic.acks + 20, 30)
            assert traffic.acks > at_cut  # the traffic went on after the heal
            # kill -9 of the eu im running the pullers, mid-traffic: the other takes over
            await asyncio.to_thread(eu.cluster.kill, victim)
            at_kill = traffic.acks
            survivor = await asyncio.to_thread(wait_for, eu.jobs_at, 20, "eu's jobs moved")
            assert survivor != [victim], survivor
            done, stuck = await asyncio.wait(senders, timeout=60)
            assert not stuck, f"{len(stuck)} devices still sending"
            for sender in done:
                sender.result()
            assert traffic.acks == total + 1 and traffic.acks > at_kill
            # once settled, a send is acked without a wait for the sync timeout: the
            # peer's confirmation reaches the im holding it, whichever im it called
            for device in traffic.devices:
                for conversation in conversations_of(device, chat, group):
                    started, retries = time.monotonic(), device.client.send_retries
                    await traffic.send(device, conversation, f"{device.device}-settled")
                    took = time.monotonic() - started
                    assert took < QUICK_S and device.client.send_retries == retries, (
                        f"{device.device} into {conversation}: {took:.2f} s")
                    total += 1

            # every device: every message of its conversations once, in one order
            want_of = {d.device: sum(traffic.acked[c] for c in conversations_of(d, chat, group))
                       for d in traffic.devices}
            await asyncio.to_thread(wait_for, lambda: all(
                len(d.received) >= want_of[d.device] for d in traffic.devices), 30,
                "every device got every message")
            await asyncio.sleep(0.5)  # a second copy of anything would come now
            for device in traffic.devices:
                device.judge()
            verdict = traffic.checker.verdict()
            assert verdict.ok and verdict.acked == total + 1, verdict.summary()
            for conversation in (chat, group):
                orders = {tuple(d.order(conversation)) for d in traffic.devices
                          if d.order(conversation)}
                assert len(orders) == 1, conversation

            # both stores: the same messages seq for seq, the same inbox entries
            expected = {chat: traffic.acked[chat], group: traffic.acked[group]}

            def same() -> bool:
                eu_rows, us_rows = stored(eu, list(expected)), stored(us, list(expected))
                return eu_rows == us_rows and all(
                    [s for s, _ in eu_rows[0][c]] == list(range(1, n + 1))
                    for c, n in expected.items())

            await asyncio.to_thread(wait_for, same, 20, "both stores equal")
            _, inboxes = stored(eu, list(expected))
            for user, entries in inboxes.items():
                assert [n for n, _, _ in entries] == sorted({n for n, _, _ in entries}), user
                assert len(entries) == expected[group] + (
                    expected[chat] if user in ("ann", "bob") else 0), user
            # the killed im back: eu's jobs on one im again, a later change of a group
            await asyncio.to_thread(eu.cluster.start_member, victim)
            await a_member_added_in_us_sends_in_eu(eu, us, traffic)
            print(f"\ncluster regions ({durability}): {traffic.acks} acked in"
                  f" {time.monotonic() - began:.1f} s, jobs {victim} -> {survivor[0]},"
                  f" {sum(d.client.send_retries for d in traffic.devices)} resends")
        finally:
            for device in traffic.devices:
                await device.stop()
