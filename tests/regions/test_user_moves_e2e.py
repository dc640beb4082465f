"""Admin moves of a user's home (docs/architecture.md, "Moving a user's home") across two
real `chatplane up` regions, each with its own SQLite store, driven through the SDK and
judged by the delivery checker: the region that writes alice's inbox sequence moves
from eu to us and back while others send to her, and every inbox_seq still names one
message, the same in both stores and on her devices in both regions, with no gap."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.regions import (
    SHARED_KEY,
    RegionProcess,
    caught_up,
    move_user_home,
    region_device,
    sees,
    two_regions,
    wait_for,
)
from tests.support.traffic import Device, next_event, send_many, wait_until_received

pytestmark = pytest.mark.slow


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    with two_regions(tmp_path) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(sees, me, other.name), 20, f"{me.name} sees {other.name}")
        yield eu, us


def _metric(region: RegionProcess, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200
    line = next((x for x in text.splitlines() if x.startswith(f"{name} ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def _placed(region: RegionProcess, users: int) -> None:
    """`users` homes placed in `region` (a login places its user's home in the
    background)."""
    wait_for(lambda: _metric(region, "chatplane_region_user_homes_placed_total") >= users, 20,
             f"{users} user homes placed in {region.name}")


def _inbox(region: RegionProcess, user: str) -> list[tuple[int, str, int]]:
    """The user's inbox as the region's store holds it: (inbox_seq, conversation, seq)."""
    db = sqlite3.connect(f"file:{region.data_dir / 'chatplane.db'}?mode=ro", uri=True)
    try:
        return [(int(n), str(c), int(s)) for n, c, s in db.execute(
            "SELECT inbox_seq, conversation_id, seq FROM inbox WHERE user_id = ?"
            " ORDER BY inbox_seq", (user,))]
    finally:
        db.close()


def _timeline(region: RegionProcess, conversation: str) -> list[tuple[int, str]]:
    """A conversation as the region's store holds it: (seq, message id)."""
    db = sqlite3.connect(f"file:{region.data_dir / 'chatplane.db'}?mode=ro", uri=True)
    try:
        return [(int(s), str(m)) for s, m in db.execute(
            "SELECT seq, message_id FROM messages WHERE conversation_id = ? ORDER BY seq",
            (conversation,))]
    finally:
        db.close()


def _inbox_map(device: Device) -> dict[int, tuple[str, int]]:
    return {m.inbox_seq: (m.conversation_id, m.seq) for m in device.received if m.inbox_seq}


async def _paced_until(device: Device, conversation: str, stop: asyncio.Event,
                       pause_s: float, burst: int = 3) -> int:
    """`burst` sends in flight at once, acked, then a pause, until `stop` is set;
    returns how many."""
    sent = 0
    while not stop.is_set():
        await send_many(device, conversation, burst, f"{device.device}-{sent}")
        sent += burst
        await asyncio.sleep(pause_s)
    return sent


async def test_an_admin_call_moves_a_users_home_under_traffic_and_back(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """alice is homed in eu (her first login), with a device in each region; bob (homed
    in us) writes to her in a chat homed in us, carol (homed in eu) in a chat homed in
    eu, both all along. The admin call on us moves alice's home to us, the call on eu
    moves it back, twice: every device gets every message once and in order, alice's inbox
    holds each message once at one inbox_seq, 1..n with no gap, the same in both
    stores and on both of her devices."""
    eu, us = regions
    checker = DeliveryChecker()
    devices: list[Device] = []
    stop = asyncio.Event()
    sending: asyncio.Future[list[int]] | None = None
    try:
        a_eu = await region_device(eu, "alice", "a-eu", checker)
        devices.append(a_eu)
        await asyncio.to_thread(_placed, eu, 1)
        bob = await region_device(us, "bob", "b-us", checker)
        devices.append(bob)
        await asyncio.to_thread(_placed, us, 1)
        carol = await region_device(eu, "carol", "c-eu", checker)
        devices.append(carol)
        await asyncio.to_thread(_placed, eu, 2)
        a_us = await region_device(us, "alice", "a-us", checker)
        devices.append(a_us)
        with_bob = await bob.client.direct("alice")
        with_carol = await carol.client.direct("alice")
        for conversation, other in ((with_bob, "bob"), (with_carol, "carol")):
            assert await a_eu.client.direct(other) == conversation
            checker.add_member(conversation, "alice")
            checker.add_member(conversation, other)
        await send_many(bob, with_bob, 1, "first")  # homed in us
        await send_many(carol, with_carol, 1, "first")  # homed in eu
        await wait_until_received(devices, 1, 20)

        # the call is made on the region that takes the home; no such user: 404
        status, body = await asyncio.to_thread(move_user_home, eu, "alice", "us")
        assert status == 400 and "make this call on region us's admin port" in body["error"]
        status, body = await asyncio.to_thread(move_user_home, us, "nobody", "us")
        assert status == 404, body

        sending = asyncio.gather(_paced_until(bob, with_bob, stop, 0.02),
                                 _paced_until(carol, with_carol, stop, 0.02))
        # there and back, twice: each move is a chance for the old home to write an
        # entry the new one writes too (without the hold, half the runs did it once)
        for epoch, (to, old) in enumerate(((us, eu), (eu, us)) * 2, start=2):
            await asyncio.sleep(0.5)
            status, moved = await asyncio.to_thread(move_user_home, to, "alice", to.name)
            assert status == 200, moved
            assert moved == {"user_id": "alice", "home": to.name, "epoch": epoch,
                             "moved": True, "moved_from": old.name, "took_s": moved["took_s"],
                             "owed_written": moved["owed_written"]}
        await asyncio.sleep(0.5)  # some sends after the last move, then the senders stop
        stop.set()
        bob_sent, carol_sent = await asyncio.wait_for(sending, 60)
        sent = bob_sent + carol_sent
        again = await asyncio.to_thread(move_user_home, eu, "alice", "eu")
        assert again == (200, {"user_id": "alice", "home": "eu", "epoch": 5, "moved": False})
        for region in (eu, us):
            assert _metric(region, "chatplane_region_user_homes_moved_here_total") == 2
            assert _metric(region, "chatplane_region_user_homes_handed_off_total") == 2

        total = 2 + sent  # everything alice receives (bob and carol: their own chat's)
        await wait_until_received([a_eu, a_us], total, 30)
        await wait_until_received([bob], 1 + bob_sent, 30)
        await wait_until_received([carol], 1 + carol_sent, 30)
        await asyncio.sleep(0.5)  # anything delivered twice would come now
        for device in devices:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == total and verdict.ok, verdict.summary()
        # alice's inbox: each message once, at one inbox_seq, 1..n, on both devices
        assert _inbox_map(a_eu) == _inbox_map(a_us)
        assert sorted(_inbox_map(a_eu)) == list(range(1, total + 1))
        assert len(set(_inbox_map(a_eu).values())) == total
        # and in both stores, the same message at each inbox_seq
        await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 30, "caught up")
        held_eu, held_us = _inbox(eu, "alice"), _inbox(us, "alice")
        assert [n for n, _, _ in held_eu] == list(range(1, total + 1))
        assert held_eu == held_us
        assert sorted((c, s) for _, c, s in held_eu) == sorted(_inbox_map(a_eu).values())
    finally:
        stop.set()
        if sending is not None:
            await asyncio.gather(sending, return_exceptions=True)
        for device in devices:
            await device.stop()


async def test_the_users_events_and_friend_records_move_with_the_home(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """alice's events (`u:alice`) and the friend records of the pairs she decides
    (`r:alice`: she sorts first) are sequenced by her home: bob's request is decided
    and told in eu, carol's in us once alice's home moved there, dave's in eu again
    once it moved back. Each event reaches her clients in both regions at one
    inbox_seq, and both stores hold the same timelines and inbox, with no gap."""
    eu, us = regions
    mint = TokenSigner(SHARED_KEY).mint
    clients: dict[str, Client] = {}
    try:
        for name, where in (("alice-eu", eu), ("bob", us), ("carol", eu), ("dave", us),
                            ("alice-us", us)):
            client = Client([where.url], mint(name.split("-")[0], name), request_timeout_s=20)
            await client.connect()
            clients[name] = client
            if name == "alice-eu":
                await asyncio.to_thread(_placed, eu, 1)  # alice is homed in eu
        alice = (clients["alice-eu"], clients["alice-us"])

        async def told(asker: str) -> int:
            await clients[asker].add_friend("alice", f"hello from {asker}")
            seen = [await next_event(client, "friend", timeout_s=30) for client in alice]
            assert [e.detail["actor"] for e in seen] == [asker, asker]
            assert seen[0].message.message_id == seen[1].message.message_id
            assert seen[0].message.inbox_seq == seen[1].message.inbox_seq
            return seen[0].message.inbox_seq

        inbox_seqs = [await told("bob")]  # decided and told in eu
        status, moved = await asyncio.to_thread(move_user_home, us, "alice", "us")
        assert (status, moved["home"], moved["epoch"]) == (200, "us", 2), moved
        inbox_seqs.append(await told("carol"))  # in us now
        status, back = await asyncio.to_thread(move_user_home, eu, "alice", "eu")
        assert (status, back["home"], back["epoch"]) == (200, "eu", 3), back
        inbox_seqs.append(await told("dave"))
        assert inbox_seqs == [1, 2, 3]
        await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 30, "caught up")
        for timeline in ("u:alice", "r:alice"):
            held = _timeline(eu, timeline)
            assert [seq for seq, _ in held] == [1, 2, 3], timeline
            assert _timeline(us, timeline) == held, timeline
        assert [n for n, _, _ in _inbox(eu, "alice")] == [1, 2, 3]
        assert _inbox(eu, "alice") == _inbox(us, "alice")
    finally:
        for client in clients.values():
            await client.close()
