"""The first "Must hold" of issue 17 at its own scale, with real processes: two
`chatplane up` regions in `sync` durability (the default) and a failover witness, every
link through a proxy that can cut it. 50 users, 25 homed in each region (their first
login), each with 3 devices spread over both regions; one 50-member group homed in eu
and 25 1:1 chats, homed alternately in eu and us. Every device sends into its chat and
the group at a bounded rate while the region link is cut and healed four times, each
cut falling in the middle of the traffic. Then: every device got every acked message
exactly once and in one order (the delivery checker), and both regions' stores hold
the same messages seq for seq and the same (user, inbox_seq) entries
(docs/architecture.md, "Regions" and "User homes")."""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.regions import (
    SHARED_KEY,
    Cuts,
    RegionProcess,
    caught_up,
    sees,
    wait_for,
    witnessed_regions,
)
from tests.support.traffic import Device

pytestmark = pytest.mark.slow

USERS = 50  # m00..m49: even ones homed in eu, odd ones in us
NO_CONSENT = {"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}  # members are added, not invited
CUTS_S = (1.0, 2.0, 1.5, 2.0)  # each below the sync timeout (3 s) and the detection (5 s)
BETWEEN_CUTS_S = 2.0  # at least, and ACKS_BETWEEN acks: the next cut falls mid-traffic
ACKS_BETWEEN = 50
RESUME_S = 30.0  # a heal to ACKS_BETWEEN acks, at most
SEND_EVERY_S = 1.5  # per device: 150 devices, about 100 sends/s offered in all
GROUP_EVERY = 5  # a device's every 5th send goes to the group, the others to its chat


def user(n: int) -> str:
    return f"m{n:02d}"


def home_of(n: int) -> str:
    return "eu" if n % 2 == 0 else "us"


def device_regions(n: int) -> list[str]:
    """Where user n's three devices connect: two at home and one away, or one at home
    and two away (alternating by pairs of users); the first is always at home, so the
    user's first login places its home there."""
    home, away = ("eu", "us") if home_of(n) == "eu" else ("us", "eu")
    return [home, home, away] if n % 4 < 2 else [home, away, away]


def chat_home(k: int) -> str:
    """Chat k (between m{2k}, homed in eu, and m{2k+1}, homed in us) is homed where its
    first send is made: eu for even k, us for odd k (from m{2k}'s device there)."""
    return "eu" if k % 2 == 0 else "us"


@dataclass
class Mesh:
    regions: dict[str, RegionProcess]
    checker: DeliveryChecker = field(default_factory=DeliveryChecker)
    devices: list[Device] = field(default_factory=list)
    chat_of: dict[str, str] = field(default_factory=dict)  # user -> its 1:1 chat
    group: str = ""
    # per send: (the conversation, started, acked) on the monotonic clock
    sends: list[tuple[str, float, float]] = field(default_factory=list)

    def of(self, n: int) -> list[Device]:
        return [d for d in self.devices if d.user == user(n)]

    async def connect(self, http: aiohttp.ClientSession, n: int, i: int, region: str) -> Device:
        client = Client([self.regions[region].url],
                        TokenSigner(SHARED_KEY).mint(user(n), f"d{i}-{region}"),
                        http=http, request_timeout_s=60)
        await client.connect(timeout_s=30)
        # receipts judged at the end: the group's creation arrives before its id is known
        device = Device(client, user(n), f"d{i}-{region}", self.checker, defer=True)
        device.start()
        self.devices.append(device)
        return device

    async def send(self, device: Device, conversation: str, text: str) -> None:
        started = time.monotonic()
        ack = await device.client.send_text(conversation, text)
        self.sends.append((conversation, started, time.monotonic()))
        self.checker.record_ack(device.user, device.device, ack.conversation_id, ack.seq,
                                ack.message_id, cid=ack.cid)

    async def paced(self, device: Device, offset: int, stop: asyncio.Event) -> None:
        """One send in flight at a time, one every SEND_EVERY_S (staggered by `offset`)."""
        await asyncio.sleep(SEND_EVERY_S * (offset % 30) / 30)
        for i in itertools.count():
            if stop.is_set():
                return
            to_group = (i + offset) % GROUP_EVERY == 0
            conversation = self.group if to_group else self.chat_of[device.user]
            began = time.monotonic()
            await self.send(device, conversation, f"{device.device}-{i}")
            await asyncio.sleep(max(0.0, SEND_EVERY_S - (time.monotonic() - began)))


def _db(region: RegionProcess) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{region.data_dir / 'chatplane.db'}?mode=ro", uri=True)


def _homed(region: RegionProcess, kind: str, want: dict[str, str]) -> bool:
    """The region's store holds a confirmed `homes` row of `kind` for each key of `want`,
    in the region named there."""
    db = _db(region)
    try:
        rows = {k: r for k, r in db.execute(
            "SELECT key, region FROM homes WHERE kind = ? AND confirmed", (kind,))}
    finally:
        db.close()
    return {k: rows.get(k) for k in want} == want


def _stored(region: RegionProcess, conversations: list[str], users: list[str],
            ) -> tuple[dict[str, list[tuple[int, str]]], dict[str, list[tuple[int, str, int]]]]:
    """What the region's store holds: each conversation's (seq, message_id), and each
    user's inbox (inbox_seq, conversation, seq)."""
    db = _db(region)
    try:
        messages = {c: [(int(s), str(m)) for s, m in db.execute(
            "SELECT seq, message_id FROM messages WHERE conversation_id = ? ORDER BY seq", (c,))]
            for c in conversations}
        inboxes = {u: [(int(n), str(c), int(s)) for n, c, s in db.execute(
            "SELECT inbox_seq, conversation_id, seq FROM inbox WHERE user_id = ?"
            " ORDER BY inbox_seq", (u,))] for u in users}
        return messages, inboxes
    finally:
        db.close()


async def _place(mesh: Mesh, http: aiohttp.ClientSession) -> list[str]:
    """Every user's devices logged in (the first at home, placing the user's home
    there), the group made in eu, each chat's first message sent where it is homed;
    each home checked in both stores. Returns the chats."""
    eu, us = mesh.regions["eu"], mesh.regions["us"]
    users = [user(n) for n in range(USERS)]
    gate = asyncio.Semaphore(8)  # logins at once (a 2-core machine)

    async def connect(n: int, i: int) -> None:
        async with gate:
            await mesh.connect(http, n, i, device_regions(n)[i])

    await asyncio.gather(*(connect(n, 0) for n in range(USERS)))
    want = {u: home_of(n) for n, u in enumerate(users)}
    for region in (eu, us):
        await asyncio.to_thread(wait_for, functools.partial(_homed, region, "user", want), 30,
                                f"the users' homes in {region.name}'s store")
    await asyncio.gather(*(connect(n, i) for n in range(USERS) for i in (1, 2)))
    assert len(mesh.devices) == 3 * USERS
    assert sum(d.client.position()["region"] == "eu" for d in mesh.devices) == 75

    # the group, created in eu by m00 (homed in eu): homed in eu
    creator = next(d for d in mesh.of(0) if d.device.endswith("-eu"))
    mesh.group = await creator.client.create_group("fifty", users[1:])
    for u in users:
        mesh.checker.add_member(mesh.group, u)
    # the chats: m{2k} opens it and sends first from its device in chat_home(k)
    for k in range(USERS // 2):
        left, right = mesh.of(2 * k), mesh.of(2 * k + 1)
        opener = next(d for d in left if d.device.endswith(f"-{chat_home(k)}"))
        chat = await opener.client.direct(user(2 * k + 1))
        assert await right[0].client.direct(user(2 * k)) == chat
        for u in (user(2 * k), user(2 * k + 1)):
            mesh.chat_of[u] = chat
            mesh.checker.add_member(chat, u)
        await mesh.send(opener, chat, "first")  # places the chat's home
    chats = [mesh.chat_of[user(2 * k)] for k in range(USERS // 2)]
    homed = {mesh.group: "eu"} | {c: chat_home(k) for k, c in enumerate(chats)}
    for region in (eu, us):
        await asyncio.to_thread(wait_for, functools.partial(
            _homed, region, "conversation", homed), 30,
            f"the conversations' homes in {region.name}'s store")
    return chats


async def _cut_repeatedly(mesh: Mesh, cuts: Cuts) -> list[tuple[float, float]]:
    """Cut the region link CUTS_S times, each once the traffic runs again: at least
    BETWEEN_CUTS_S after the last heal and after ACKS_BETWEEN acks since it (a loaded
    machine takes a while to catch up); the traffic not running again within
    RESUME_S of a heal fails. Returns (cut, healed) per cut, on the monotonic clock."""
    windows: list[tuple[float, float]] = []
    healed = time.monotonic()
    for cut_s in [*CUTS_S, 0.0]:
        while time.monotonic() - healed < BETWEEN_CUTS_S or sum(
                1 for _, _, acked in mesh.sends if acked > healed) < ACKS_BETWEEN:
            assert time.monotonic() - healed < RESUME_S, (
                f"{sum(1 for _, _, a in mesh.sends if a > healed)} acks in {RESUME_S} s"
                f" after the heal of cut {len(windows)}")
            await asyncio.sleep(0.1)
        if not cut_s:
            return windows
        began = time.monotonic()
        cuts.partition()  # both still reach the witness: no home moves
        await asyncio.sleep(cut_s)
        cuts.heal()
        healed = time.monotonic()
        windows.append((began, healed))
    return windows


def _mid_traffic(mesh: Mesh, windows: list[tuple[float, float]]) -> list[float]:
    """Each cut fell in the middle of the traffic: sends in flight across it (in `sync`
    none is acked until a peer confirms it: they wait for the heal, or are refused and
    resent). Returns, per cut, the time from the heal to the first ack after it."""
    resumed = []
    for cut_at, healed_at in windows:
        across = sum(1 for _, sent, acked in mesh.sends if sent < healed_at and acked > cut_at)
        assert across > 10, across
        resumed.append(round(min(a for _, _, a in mesh.sends if a >= healed_at) - healed_at, 2))
    return resumed


async def _all_received(mesh: Mesh, expected: dict[str, int], timeout_s: float) -> None:
    """Until each device received what its conversations' acks add up to."""
    def short() -> list[str]:
        return [f"{d.user}/{d.device}={len(d.received)}" for d in mesh.devices
                if len(d.received) < expected[mesh.group] + expected[mesh.chat_of[d.user]]]

    deadline = time.monotonic() + timeout_s
    while missing := short():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; short: {missing[:10]} ({len(missing)} devices)")
        await asyncio.sleep(0.1)


def _same_stores(mesh: Mesh, expected: dict[str, int]) -> None:
    """Both stores: each conversation's messages seq for seq (contiguous, every acked
    one), each user's inbox entry for entry (contiguous, one per message)."""
    users = [user(n) for n in range(USERS)]
    (eu_messages, eu_inboxes), (us_messages, us_inboxes) = (
        _stored(mesh.regions[r], list(expected), users) for r in ("eu", "us"))
    assert eu_messages == us_messages
    for conversation, rows in eu_messages.items():
        assert [s for s, _ in rows] == list(range(1, expected[conversation] + 1)), conversation
    assert eu_inboxes == us_inboxes
    for u in users:
        inbox = eu_inboxes[u]
        assert [n for n, _, _ in inbox] == list(range(1, len(inbox) + 1)), u
        assert len(inbox) == expected[mesh.group] + expected[mesh.chat_of[u]], u


async def test_fifty_users_three_devices_each_through_repeated_cuts(tmp_path: Path) -> None:
    """25 users homed in each region, 3 devices each over both, a 50-member group and
    25 1:1 chats homed in both regions, all sending through four cuts of the link."""
    # one HTTP session for the 150 clients; unbounded: each websocket holds a connection
    async with witnessed_regions(tmp_path, NO_CONSENT) as (eu, us, _, cuts), \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for me, other in ((eu, us), (us, eu)):
            await asyncio.to_thread(wait_for, functools.partial(sees, me, other.name), 20,
                                    f"{me.name} sees {other.name}")
        mesh = Mesh({"eu": eu, "us": us})
        senders: list[asyncio.Future[None]] = []
        try:
            chats = await _place(mesh, http)
            stop = asyncio.Event()
            senders += [asyncio.ensure_future(mesh.paced(d, j, stop))
                        for j, d in enumerate(mesh.devices)]
            began = time.monotonic()
            windows = await _cut_repeatedly(mesh, cuts)
            stop.set()
            done, stuck = await asyncio.wait(senders, timeout=60)
            assert not stuck, (f"{len(stuck)} devices wait for an ack 60 s on; eu's view of us:"
                               f" {eu.peers()['us']['replication']}, us's of eu:"
                               f" {us.peers()['eu']['replication']}")
            for sender in done:
                sender.result()
            traffic_s = time.monotonic() - began
            resumed = _mid_traffic(mesh, windows)

            # every device: every acked message of its conversations, once, in one order
            expected = {c: sum(1 for x, _, _ in mesh.sends if x == c) for c in chats}
            expected[mesh.group] = 1 + sum(1 for x, _, _ in mesh.sends if x == mesh.group)
            await _all_received(mesh, expected, 90)
            await asyncio.sleep(0.5)  # a second copy of anything would come now
            for device in mesh.devices:
                device.judge()
            verdict = mesh.checker.verdict()
            assert verdict.acked == len(mesh.sends) and verdict.ok, verdict.summary()
            for conversation in expected:
                orders = {tuple(d.order(conversation)) for d in mesh.devices
                          if d.order(conversation)}
                assert len(orders) == 1, conversation
            assert not any(d.client.store_resets for d in mesh.devices)

            await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 60, "caught up")
            _same_stores(mesh, expected)
            while_cut = sum(1 for _, _, acked in mesh.sends
                            if any(a <= acked < b for a, b in windows))
            resent = sum(d.client.send_retries for d in mesh.devices)
            dropped = sum(d.client.duplicate_entries for d in mesh.devices)
            print(f"\nmesh: {len(mesh.sends)} acked in {traffic_s:.1f} s ({expected[mesh.group]}"
                  f" in the group, {while_cut} while cut), {verdict.received} received;"
                  f" cuts {[round(b - a, 1) for a, b in windows]} s, acks again {resumed} s"
                  f" after each heal; {resent} resends, {dropped} second copies the SDK dropped")
        finally:
            for sender in senders:
                sender.cancel()
            for device in mesh.devices:
                await device.stop()
