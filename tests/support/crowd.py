"""A crowd of SDK users over two or more regions, for issue 17's first Must hold at its
scale (tests/regions/test_mesh_e2e.py): users homed in every region, each with three
devices spread over the regions, one group of them all and 1:1 chats homed in every
region; every device sends at a bounded rate while region links are cut and healed, each
cut falling mid-traffic; then the delivery checker judges what the devices got, and
every region's store must hold the same messages seq for seq and the same
(user, inbox_seq) entries."""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.regions import SHARED_KEY, RegionProcess, caught_up, wait_for
from tests.support.traffic import Device

BETWEEN_CUTS_S = 2.0  # at least, and ACKS_BETWEEN acks: the next cut falls mid-traffic
ACKS_BETWEEN = 50
RESUME_S = 30.0  # a heal to ACKS_BETWEEN acks, at most
SEND_EVERY_S = 1.5  # per device: 150 devices, about 100 sends/s offered in all
GROUP_EVERY = 5  # a device's every 5th send goes to the group, the others to its chat
LOGINS_AT_ONCE = 8  # a 2-core machine


@dataclass(frozen=True)
class Layout:
    """`users` users (m00, m01, ...) over `regions`, the first of which homes the group:
    user n is homed in regions[n % len(regions)] (its first login is there), and chat k,
    between users 2k and 2k+1, in regions[k % len(regions)] (its first send is made
    there, from user 2k's device in that region; with three regions a third of the chats
    are homed where neither member is)."""

    regions: tuple[str, ...]
    users: int

    @staticmethod
    def user(n: int) -> str:
        return f"m{n:02d}"

    def home_of(self, n: int) -> str:
        return self.regions[n % len(self.regions)]

    def device_regions(self, n: int) -> list[str]:
        """Where user n's three devices connect, the first at home (so the user's first
        login places its home there). Two regions: two at home and one away, or one at
        home and two away (alternating by pairs of users); three or more: one in each of
        three regions, from the user's home on."""
        at = n % len(self.regions)
        around = [*self.regions[at:], *self.regions[:at]]
        if len(around) == 2:
            home, away = around
            return [home, home, away] if n % 4 < 2 else [home, away, away]
        return around[:3]

    def chat_home(self, k: int) -> str:
        return self.regions[k % len(self.regions)]


@dataclass(frozen=True)
class Cut:
    """One cut of region links: named in failures, made by `make` (healed by the run),
    lasting `seconds`."""

    name: str
    make: Callable[[], None]
    seconds: float


@dataclass
class Crowd:
    layout: Layout
    regions: dict[str, RegionProcess]
    checker: DeliveryChecker = field(default_factory=DeliveryChecker)
    devices: list[Device] = field(default_factory=list)
    chat_of: dict[str, str] = field(default_factory=dict)  # user -> its 1:1 chat
    group: str = ""
    # per send: (the conversation, started, acked) on the monotonic clock
    sends: list[tuple[str, float, float]] = field(default_factory=list)
    homes: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> key -> region

    @property
    def users(self) -> list[str]:
        return [self.layout.user(n) for n in range(self.layout.users)]

    def of(self, n: int) -> list[Device]:
        return [d for d in self.devices if d.user == self.layout.user(n)]

    async def connect(self, http: aiohttp.ClientSession, n: int, i: int, region: str) -> Device:
        user, name = self.layout.user(n), f"d{i}-{region}"
        client = Client([self.regions[region].url], TokenSigner(SHARED_KEY).mint(user, name),
                        http=http, request_timeout_s=60)
        await client.connect(timeout_s=30)
        # receipts judged at the end: the group's creation arrives before its id is known
        device = Device(client, user, name, self.checker, defer=True)
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

    async def place(self, http: aiohttp.ClientSession) -> list[str]:
        """Every user's devices logged in (the first at home, placing the user's home
        there), the group made in the first region, each chat's first message sent where
        it is homed; each home checked in every store. Returns the chats."""
        layout, gate = self.layout, asyncio.Semaphore(LOGINS_AT_ONCE)

        async def connect(n: int, i: int) -> None:
            async with gate:
                await self.connect(http, n, i, layout.device_regions(n)[i])

        await asyncio.gather(*(connect(n, 0) for n in range(layout.users)))
        self.homes["user"] = {layout.user(n): layout.home_of(n) for n in range(layout.users)}
        await self._homed_everywhere("user", self.homes["user"])
        await asyncio.gather(*(connect(n, i) for n in range(layout.users) for i in (1, 2)))
        spread = Counter(r for n in range(layout.users) for r in layout.device_regions(n))
        assert Counter(d.client.position()["region"] for d in self.devices) == spread

        first = layout.regions[0]  # the group, created there by m00 (homed there)
        creator = next(d for d in self.of(0) if d.device.endswith(f"-{first}"))
        self.group = await creator.client.create_group("everyone", self.users[1:])
        for user in self.users:
            self.checker.add_member(self.group, user)
        chats = []
        for k in range(layout.users // 2):  # m{2k} opens chat k, sends first where it is homed
            left, right = self.of(2 * k), self.of(2 * k + 1)
            opener = next(d for d in left if d.device.endswith(f"-{layout.chat_home(k)}"))
            chat = await opener.client.direct(layout.user(2 * k + 1))
            assert await right[0].client.direct(layout.user(2 * k)) == chat
            for user in (layout.user(2 * k), layout.user(2 * k + 1)):
                self.chat_of[user] = chat
                self.checker.add_member(chat, user)
            await self.send(opener, chat, "first")  # places the chat's home
            chats.append(chat)
        self.homes["conversation"] = {self.group: first} | {
            c: layout.chat_home(k) for k, c in enumerate(chats)}
        await self._homed_everywhere("conversation", self.homes["conversation"])
        return chats

    async def _homed_everywhere(self, kind: str, want: dict[str, str]) -> None:
        for region in self.regions.values():
            await asyncio.to_thread(wait_for, functools.partial(_homed, region, kind, want),
                                    30, f"the {kind}s' homes in {region.name}'s store")

    async def cut_repeatedly(self, cuts: list[Cut],
                             heal: Callable[[], None]) -> list[tuple[float, float]]:
        """Make each cut once the traffic runs again: at least BETWEEN_CUTS_S after the
        last heal and after ACKS_BETWEEN acks since it (a loaded machine takes a while
        to catch up); the traffic not running again within RESUME_S of a heal fails.
        Returns (cut, healed) per cut, on the monotonic clock."""
        windows: list[tuple[float, float]] = []
        healed = time.monotonic()
        for cut in [*cuts, None]:
            while time.monotonic() - healed < BETWEEN_CUTS_S or sum(
                    1 for _, _, acked in self.sends if acked > healed) < ACKS_BETWEEN:
                assert time.monotonic() - healed < RESUME_S, (
                    f"{sum(1 for _, _, a in self.sends if a > healed)} acks in {RESUME_S} s"
                    f" after the heal of cut {len(windows)} ({cuts[len(windows) - 1].name});"
                    f" {self.replication()}")
                await asyncio.sleep(0.1)
            if cut is None:
                return windows
            began = time.monotonic()
            cut.make()
            await asyncio.sleep(cut.seconds)
            heal()
            healed = time.monotonic()
            windows.append((began, healed))
        return windows

    def mid_traffic(self, windows: list[tuple[float, float]]) -> list[float]:
        """Each cut fell in the middle of the traffic: sends in flight across it (in
        `sync` none is acked until a peer confirms it: they wait for the heal, or are
        refused and resent). Returns, per cut, the time from the heal to the first ack
        after it."""
        resumed = []
        for n, (cut_at, healed_at) in enumerate(windows):
            across = sum(1 for _, sent, acked in self.sends if sent < healed_at and acked > cut_at)
            assert across > 10, f"cut {n}: {across} sends in flight across it"
            resumed.append(round(min(a for _, _, a in self.sends if a >= healed_at) - healed_at, 2))
        return resumed

    async def all_received(self, expected: dict[str, int], timeout_s: float) -> None:
        """Until each device received what its conversations' acks add up to."""
        def short() -> list[str]:
            return [f"{d.user}/{d.device}={len(d.received)}" for d in self.devices
                    if len(d.received) < expected[self.group] + expected[self.chat_of[d.user]]]

        deadline = time.monotonic() + timeout_s
        while missing := short():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; short: {missing[:10]} ({len(missing)}"
                                     f" devices); {self.replication()}")
            await asyncio.sleep(0.1)

    def same_stores(self, expected: dict[str, int]) -> None:
        """Every store: each conversation's messages seq for seq (contiguous, every acked
        one), each user's inbox entry for entry (contiguous, one per message), the same
        as the first region's."""
        held = {name: _stored(region, list(expected), self.users)
                for name, region in self.regions.items()}
        first, (messages, inboxes) = next(iter(held.items()))
        for name, (other_messages, other_inboxes) in held.items():
            for conversation in expected:
                assert other_messages[conversation] == messages[conversation], (
                    f"{conversation} in {name}'s store and {first}'s: " + _first_difference(
                        other_messages[conversation], messages[conversation]))
            for user in self.users:
                assert other_inboxes[user] == inboxes[user], (
                    f"{user}'s inbox in {name}'s store and {first}'s: " + _first_difference(
                        other_inboxes[user], inboxes[user]))
        for conversation, rows in messages.items():
            assert [s for s, _ in rows] == list(range(1, expected[conversation] + 1)), conversation
        for user in self.users:
            inbox = inboxes[user]
            assert [n for n, _, _ in inbox] == list(range(1, len(inbox) + 1)), user
            assert len(inbox) == expected[self.group] + expected[self.chat_of[user]], user

    def replication(self) -> str:
        """How each region's replication of each peer stands (for failures)."""
        views = []
        for name, region in self.regions.items():
            for peer, report in region.peers().items():
                views.append(f"{name}'s view of {peer}: {report.get('replication')}")
        return "; ".join(views)

    async def run(self, http: aiohttp.ClientSession, cuts: list[Cut],
                  heal: Callable[[], None]) -> str:
        """Place the crowd, send through `cuts`, judge; returns a line of figures. The
        devices are stopped at the end."""
        senders: list[asyncio.Future[None]] = []
        try:
            chats = await self.place(http)
            stop = asyncio.Event()
            senders += [asyncio.ensure_future(self.paced(d, j, stop))
                        for j, d in enumerate(self.devices)]
            began = time.monotonic()
            windows = await self.cut_repeatedly(cuts, heal)
            stop.set()
            done, stuck = await asyncio.wait(senders, timeout=60)
            assert not stuck, (f"{len(stuck)} devices wait for an ack 60 s on;"
                               f" {self.replication()}")
            for sender in done:
                sender.result()
            traffic_s = time.monotonic() - began
            resumed = self.mid_traffic(windows)

            # every device: every acked message of its conversations, once, in one order
            expected = {c: sum(1 for x, _, _ in self.sends if x == c) for c in chats}
            expected[self.group] = 1 + sum(1 for x, _, _ in self.sends if x == self.group)
            await self.all_received(expected, 90)
            await asyncio.sleep(0.5)  # a second copy of anything would come now
            for device in self.devices:
                device.judge()
            verdict = self.checker.verdict()
            assert verdict.acked == len(self.sends) and verdict.ok, verdict.summary()
            for conversation in expected:
                orders = {tuple(d.order(conversation)) for d in self.devices
                          if d.order(conversation)}
                assert len(orders) == 1, conversation
            assert not any(d.client.store_resets for d in self.devices)

            await asyncio.to_thread(wait_for, lambda: caught_up(*self.regions.values()), 60,
                                    "every region caught up with every other")
            self.same_stores(expected)
            for kind, placed in self.homes.items():  # no cut moved a home
                await self._homed_everywhere(kind, placed)
            while_cut = sum(1 for _, _, acked in self.sends
                            if any(a <= acked < b for a, b in windows))
            resent = sum(d.client.send_retries for d in self.devices)
            dropped = sum(d.client.duplicate_entries for d in self.devices)
            lasted = [f"{c.name} {b - a:.1f} s" for c, (a, b) in zip(cuts, windows, strict=True)]
            return (f"{len(self.regions)} regions, {len(self.devices)} devices:"
                    f" {len(self.sends)} acked in {traffic_s:.1f} s ({expected[self.group]} in"
                    f" the group, {while_cut} while cut), {verdict.received} received; cuts"
                    f" {lasted},"
                    f" acks again {resumed} s after each heal; {resent} resends, {dropped}"
                    f" second copies the SDK dropped")
        finally:
            for sender in senders:
                sender.cancel()
            for device in self.devices:
                await device.stop()


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


def _first_difference(these: Sequence[tuple[object, ...]], those: Sequence[tuple[object, ...]],
                      ) -> str:
    for i, (this, that) in enumerate(zip(these, those, strict=False)):
        if this != that:
            return f"row {i} is {this}, not {that}"
    return f"{len(these)} rows, not {len(those)}"
