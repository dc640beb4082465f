"""Two real `chatplane up` regions on loopback, each with its own SQLite store, driven
through the SDK and judged by the delivery checker: 1:1 chats homed in one region
(the first sender's), sends forwarded from the other, and every message replicated to
the other region's store and pushed to its devices, exactly once and in one order;
also through a stopped (SIGSTOP) and a killed and restarted region."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from tests.support.regions import (
    SHARED_KEY,
    RegionProcess,
    judged_history,
    metric,
    move_home,
    region_device,
    two_regions,
    wait_for,
)
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow

signer = TokenSigner(SHARED_KEY)


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    with two_regions(tmp_path) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(_sees, me, other.name), 20, f"{me.name} sees {other.name}")
        yield eu, us


def _sees(region: RegionProcess, peer: str) -> bool:
    return bool(region.peers()[peer]["ok"])


_device = region_device


async def _alice_and_bob(eu: RegionProcess, us: RegionProcess, checker: DeliveryChecker,
                         devices: list[Device]) -> tuple[Device, Device, str]:
    """alice's device in eu and bob's in us (added to `devices`, for the caller's
    cleanup), and their 1:1 chat, both of them members in the checker."""
    alice = await _device(eu, "alice", "a", checker)
    devices.append(alice)
    bob = await _device(us, "bob", "b", checker)
    devices.append(bob)
    conversation = await alice.client.direct("bob")
    await bob.client.direct("alice")
    checker.add_member(conversation, "alice")
    checker.add_member(conversation, "bob")
    return alice, bob, conversation


def _replication(region: RegionProcess, peer: str) -> dict[str, Any]:
    view: dict[str, Any] = region.peers()[peer]["replication"]
    return view


async def _stop_all(devices: list[Device]) -> None:
    for device in devices:
        await device.stop()


async def test_one_to_one_across_regions_once_and_in_one_order(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """alice in eu (and a second device in us), bob in us: the first send homes the
    chat in eu; then all three devices send at once from both regions."""
    eu, us = regions
    checker = DeliveryChecker()
    a_eu = await _device(eu, "alice", "a-eu", checker)
    a_us = await _device(us, "alice", "a-us", checker)
    b_us = await _device(us, "bob", "b-us", checker)
    devices = [a_eu, a_us, b_us]
    try:
        conversation = await a_eu.client.direct("bob")
        assert await b_us.client.direct("alice") == conversation
        for user in ("alice", "bob"):
            checker.add_member(conversation, user)
        await send_many(a_eu, conversation, 1, "first")  # places the home in eu
        await asyncio.wait_for(asyncio.gather(
            send_many(a_eu, conversation, 40, "a-eu"),
            send_many(a_us, conversation, 30, "a-us"),
            send_many(b_us, conversation, 40, "b-us")), 30)
        await wait_until_received(devices, 111, 20)
        for device in devices:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == 111 and verdict.ok, verdict.summary()
        orders = {tuple(d.order(conversation)) for d in devices}
        assert len(orders) == 1  # one order on every device, in both regions
        # us's own store holds the chat: history from us is the same, contiguous
        history = await b_us.client.history(conversation, limit=200)
        assert [m.seq for m in history] == list(range(1, 112))
        assert [m.message_id for m in history] == list(orders.pop())
        # sends from us were forwarded to eu, which sequenced all of them
        assert metric(us, "chatplane_region_sends_forwarded_total") == 70
        assert metric(eu, "chatplane_region_sends_served_total") == 70
        assert metric(eu, "chatplane_region_homes_placed_total") == 1
        seen = wait_for(lambda: (r := _replication(us, "eu"))["lag"] == 0 and r, 10, "no lag")
        assert seen["connected"] and seen["entries_applied"] == 111
        assert metric(us, "chatplane_region_replication_applied_total", "eu") == 111
        assert metric(us, "chatplane_region_replication_lag_entries", "eu") == 0
    finally:
        await _stop_all(devices)


async def test_two_regions_opening_a_chat_at_once_agree_on_one_home(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """Both users send their first message at the same moment, each in its own region
    (the one in us without opening the chat there first): one home wins in both stores,
    and the chats keep one order."""
    eu, us = regions
    checker = DeliveryChecker()
    pairs = [(f"e{i}", f"u{i}") for i in range(6)]
    devices: list[Device] = []
    try:
        sends = []
        for left, right in pairs:
            d_eu = await _device(eu, left, "d", checker)
            d_us = await _device(us, right, "d", checker)
            devices += [d_eu, d_us]
            # only eu's side opens the chat: us's first send creates it there
            conversation = await d_eu.client.direct(right)
            checker.add_member(conversation, left)
            checker.add_member(conversation, right)
            sends += [send_many(d_eu, conversation, 15, "eu"), send_many(d_us, conversation, 15, "us")]
        await asyncio.wait_for(asyncio.gather(*sends), 30)
        await wait_until_received(devices, 30, 20)
        for device in devices:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == 6 * 30 and verdict.ok, verdict.summary()
        placed = (metric(eu, "chatplane_region_homes_placed_total")
                  + metric(us, "chatplane_region_homes_placed_total"))
        assert placed == 6  # one home per chat, never two
    finally:
        await _stop_all(devices)


async def test_a_cut_link_loses_nothing_acked_and_converges(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """alice sends from eu (the home) all along; us is stopped (SIGSTOP) for a while,
    then killed and restarted on its store: bob's device in us ends up with every
    acked message once and in order, and us's replication resumes from its cursor.
    Then the same to the home while bob's sends are forwarded to it."""
    eu, us = regions
    checker = DeliveryChecker()
    devices: list[Device] = []
    try:
        alice, bob, conversation = await _alice_and_bob(eu, us, checker, devices)
        sending = asyncio.ensure_future(_paced(alice, conversation, 90, 0.05))
        await asyncio.sleep(0.6)
        assert us.proc is not None
        # the link hangs: eu's acks wait for us (sync), 1.5 s is within the 3 s bound
        os.kill(us.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(1.5)
        os.kill(us.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.6)
        us.kill()  # kill -9, then back on its store and ports
        await asyncio.sleep(0.5)
        us.start()
        await asyncio.wait_for(sending, 30)
        # bob's client reconnects by itself and syncs from us's store
        await wait_until_received(devices, 90, 25)
        for device in devices:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == 90 and verdict.ok, verdict.summary()
        # bob answers from us after the restart: forwarded to eu, delivered in both
        await send_many(bob, conversation, 5, "back")
        await wait_until_received(devices, 95, 15)
        verdict = checker.verdict()
        assert verdict.acked == 95 and verdict.ok, verdict.summary()
        view = wait_for(lambda: (r := _replication(us, "eu"))["lag"] == 0 and r, 10, "caught up")
        assert view["connected"]
        # the restarted us went on from the cursor in its store, not from the log's start
        assert view["entries_applied"] < 95, view
        assert _replication(eu, "us")["reconnects"] >= 1  # eu saw the cut too

        # now the home is cut while bob sends from us: stopped (the forwards wait), then
        # killed and restarted (they fail UNAVAILABLE, the SDK resends each cid)
        assert eu.proc is not None
        bob_sends = asyncio.ensure_future(_paced(bob, conversation, 30, 0.05))
        await asyncio.sleep(0.3)
        os.kill(eu.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(1.0)
        os.kill(eu.proc.pid, signal.SIGCONT)
        await asyncio.sleep(0.3)
        eu.kill()
        await asyncio.sleep(0.3)
        eu.start()
        await asyncio.wait_for(bob_sends, 30)
        await wait_until_received(devices, 125, 25)
        verdict = checker.verdict()
        assert verdict.acked == 125 and verdict.ok, verdict.summary()
        assert bob.client.send_retries >= 1  # some sends did meet the killed home
    finally:
        await _stop_all(devices)


async def _paced(device: Device, conversation: str, count: int, pause_s: float) -> None:
    for i in range(count):
        await send_many(device, conversation, 1, f"paced-{i}")
        await asyncio.sleep(pause_s)


async def _paced_until(device: Device, conversation: str, stop: asyncio.Event,
                       pause_s: float) -> int:
    """One acked send after another until `stop` is set; returns how many."""
    sent = 0
    while not stop.is_set():
        await send_many(device, conversation, 1, f"paced-{sent}")
        sent += 1
        await asyncio.sleep(pause_s)
    return sent


@pytest.fixture(params=["sync", "async"])
def durable_regions(request: pytest.FixtureRequest,
                    tmp_path: Path) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    """eu and us in either durability mode (async: the old home acks what the new
    one may not have applied yet, so only the hand-off keeps seqs apart)."""
    with two_regions(tmp_path, {"CHATPLANE_REGION_DURABILITY": request.param}) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(_sees, me, other.name), 20, f"{me.name} sees {other.name}")
        yield eu, us


async def test_an_admin_call_moves_a_chats_home_under_traffic_and_back(
    durable_regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """alice (eu) and bob (us) send all along; the chat is homed in eu (alice's first
    send). The admin call on us moves its home to us while both send, then the call on
    eu moves it back: every send is acked once, no seq names two messages in either
    region's store, and after each move the new home sequences (sends from it are no
    longer forwarded)."""
    eu, us = durable_regions
    checker = DeliveryChecker()
    devices: list[Device] = []
    devices_sending: list[asyncio.Future[Any]] = []
    try:
        alice, bob, conversation = await _alice_and_bob(eu, us, checker, devices)
        await send_many(alice, conversation, 1, "first")  # homed in eu
        status, body = await asyncio.to_thread(move_home, eu, conversation, "us")
        assert status == 400 and "make this call on region us's admin port" in body["error"]

        stop = asyncio.Event()
        sending = asyncio.gather(_paced_until(alice, conversation, stop, 0.02),
                                 _paced_until(bob, conversation, stop, 0.02))
        devices_sending.append(sending)
        await asyncio.sleep(0.5)
        status, moved = await asyncio.to_thread(move_home, us, conversation, "us")
        assert status == 200, moved
        assert (moved["home"], moved["epoch"], moved["moved"]) == ("us", 2, True)
        assert moved["moved_from"] == "eu"
        # bob's sends now sequenced in us, alice's forwarded there and served by us
        served = functools.partial(metric, us, "chatplane_region_sends_served_total")
        await asyncio.to_thread(wait_for, lambda: served() > 0, 20,
                                "us serves alice's forwarded sends while it is home")
        forwarded_by_us, served_so_far = (
            metric(us, "chatplane_region_sends_forwarded_total"), served())
        await asyncio.to_thread(wait_for, lambda: served() >= served_so_far + 3, 20,
                                "us serves more of alice's sends")
        # meanwhile bob sent too, and none of his sends left us: us is the home
        assert metric(us, "chatplane_region_sends_forwarded_total") == forwarded_by_us
        status, back = await asyncio.to_thread(move_home, eu, conversation, "eu")
        assert status == 200, back
        assert (back["home"], back["epoch"], back["moved_from"]) == ("eu", 3, "us")
        await asyncio.sleep(0.3)  # some sends after the move back, then the senders stop
        stop.set()
        sent = sum(await asyncio.wait_for(sending, 60))
        assert metric(us, "chatplane_region_homes_moved_here_total") == 1
        assert metric(eu, "chatplane_region_homes_handed_off_total") == 1

        again = await asyncio.to_thread(move_home, eu, conversation, "eu")
        assert again == (200, {"conversation_id": conversation, "home": "eu", "epoch": 3,
                               "moved": False})
        await send_many(bob, conversation, 5, "after")  # sends go on after the moves
        total = 1 + sent + 5
        await wait_until_received(devices, total, 25)
        for device in devices:
            device.judge()
        in_eu = await judged_history(alice, conversation)
        in_us = await judged_history(bob, conversation)
        assert [seq for seq, _ in in_eu] == list(range(1, total + 1))
        assert in_us == in_eu  # one message per seq, the same in both regions' stores
        verdict = checker.verdict()
        assert verdict.acked == total and verdict.ok, verdict.summary()
    finally:
        for sending in devices_sending:
            sending.cancel()
        await asyncio.gather(*devices_sending, return_exceptions=True)
        await _stop_all(devices)


async def test_sends_the_old_home_sequenced_as_it_handed_off_are_never_acked_there(
    tmp_path: Path,
) -> None:
    """async durability: alice's sends are in flight in eu (the home) when the move
    starts: eu's store is stuck (the test holds its SQLite write lock), so they commit
    only after eu handed off at its log head. us takes the home without them (past the
    head), so eu must not ack them: the SDK resends each, and us sequences it. Acked
    there, their seqs would be given again by us."""
    with two_regions(tmp_path, {"CHATPLANE_REGION_DURABILITY": "async"}) as (eu, us):
        wait_for(functools.partial(_sees, us, "eu"), 20, "us sees eu")
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            alice, bob, conversation = await _alice_and_bob(eu, us, checker, devices)
            await send_many(alice, conversation, 1, "first")  # homed in eu
            await wait_until_received(devices, 1, 10)
            store = sqlite3.connect(tmp_path / "eu" / "chatplane.db", timeout=10,
                                    isolation_level=None)
            store.execute("BEGIN IMMEDIATE")
            try:
                in_flight = asyncio.ensure_future(send_many(alice, conversation, 4, "held"))
                await asyncio.sleep(0.3)  # past eu's home check, waiting on its store
                moving = asyncio.ensure_future(asyncio.to_thread(move_home, us, conversation,
                                                                 "us"))
                await asyncio.sleep(1.5)
            finally:
                store.execute("ROLLBACK")
                store.close()
            status, moved = await asyncio.wait_for(moving, 20)
            assert status == 200 and moved["home"] == "us", moved
            await asyncio.wait_for(in_flight, 30)
            assert alice.client.send_retries >= 1  # refused by eu, resent, sequenced by us
            await send_many(bob, conversation, 5, "in-us")
            await wait_until_received(devices, 10, 20)
            in_eu = await judged_history(alice, conversation)
            in_us = await judged_history(bob, conversation)
            assert [seq for seq, _ in in_us] == list(range(1, 11))
            assert in_us == in_eu
            verdict = checker.verdict()
            assert verdict.acked == 10 and verdict.ok, verdict.summary()
        finally:
            await _stop_all(devices)


def test_a_region_shows_its_replication_per_peer(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    eu, _ = regions
    view = wait_for(lambda: (r := _replication(eu, "us"))["connected"] and r, 10, "connected")
    assert set(view) >= {"applied_to", "peer_head", "lag", "last_batch_s_ago", "error"}
    status, text = eu.get("/v1/peers")
    assert status == 200 and json.loads(text)["region"] == "eu"
