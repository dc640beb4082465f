"""Admin moves of a conversation's home (docs/architecture.md, "Moving a home") where the
new home is behind: real `chatplane up` regions, the SDK and the delivery checker.

The new home may give out seq n+1 only once it holds seq n and every seq before it: it
waits until it applied the old home's log to the head the old home handed off at. With
two regions the new home is held behind (the test holds its SQLite write lock, so it
cannot apply anything) while the old home acks sends (`async`); with three, the third
region must hold that history too before the home moves, since the old home's log stops
serving it the chat once the row moved, and must never get what the old home sequenced
past that head (a send in flight there as it stopped), which the new home does not hold."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from chatplane.checker import DeliveryChecker
from tests.support.regions import (
    RegionProcess,
    judged_history,
    move_home,
    region_device,
    sees,
    two_regions,
    wait_for,
)
from tests.support.regions import (
    caught_up as applied_both_ways,
)
from tests.support.three_regions import Mesh, caught_up, messages_of, report, three_regions
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow

HOLD_S = 2.0  # how long the new home cannot apply anything


async def _stop_all(devices: list[Device]) -> None:
    for device in devices:
        await device.stop()


async def test_the_new_home_takes_the_home_only_once_it_caught_up(tmp_path: Path) -> None:
    """async durability: eu (the home) acks alice's sends while us cannot apply eu's log
    (its store is held), then the admin call on us moves the home: us must wait until it
    applied eu's log to the head eu handed off at, then take the home. Every seq names
    one message in both stores and every send is acked once. Taken at once, us would
    find itself behind (the move given up) or, worse, give eu's seqs again."""
    with two_regions(tmp_path, {"CHATPLANE_REGION_DURABILITY": "async"}) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(sees, me, other.name), 20, f"{me.name} sees {other.name}")
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            alice = await region_device(eu, "alice", "a", checker)
            devices.append(alice)
            bob = await region_device(us, "bob", "b", checker)
            devices.append(bob)
            conversation = await alice.client.direct("bob")
            checker.add_member(conversation, "alice")
            checker.add_member(conversation, "bob")
            await send_many(alice, conversation, 1, "first")  # homed in eu
            await wait_until_received(devices, 1, 10)
            store = sqlite3.connect(tmp_path / "us" / "chatplane.db", timeout=10,
                                    isolation_level=None)
            store.execute("BEGIN IMMEDIATE")  # us applies nothing from here
            try:
                await send_many(alice, conversation, 8, "behind")  # acked by eu alone
                moving = asyncio.ensure_future(asyncio.to_thread(move_home, us, conversation,
                                                                 "us"))
                await asyncio.sleep(HOLD_S)
                assert not moving.done()  # the move waits for us to catch up
            finally:
                store.execute("ROLLBACK")
                store.close()
            status, moved = await asyncio.wait_for(moving, 20)
            assert status == 200, moved
            assert (moved["home"], moved["epoch"], moved["moved_from"]) == ("us", 2, "eu")
            assert moved["took_s"] >= HOLD_S - 0.5
            await asyncio.gather(send_many(bob, conversation, 5, "in-us"),
                                 send_many(alice, conversation, 5, "forwarded"))
            await wait_until_received(devices, 19, 20)
            for device in devices:
                device.judge()
            in_eu = await judged_history(alice, conversation)
            in_us = await judged_history(bob, conversation)
            assert [seq for seq, _ in in_us] == list(range(1, 20))
            assert in_us == in_eu  # one message per seq, the same in both stores
            verdict = checker.verdict()
            assert verdict.acked == 19 and verdict.ok, verdict.summary()
        finally:
            await _stop_all(devices)


def _metric(region: RegionProcess, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200
    line = next((x for x in text.splitlines() if x.startswith(f"{name} ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


async def _paced(device: Device, conversation: str, count: int, pause_s: float) -> None:
    for i in range(count):
        await send_many(device, conversation, 1, f"paced-{i}")
        await asyncio.sleep(pause_s)


async def _judged_everywhere(mesh: Mesh, devices: list[Device], checker: DeliveryChecker,
                             conversation: str, total: int) -> None:
    """Every device got the `total` acked messages once and in order, and once every log
    is applied the three stores hold one message at each seq 1..total, the same."""
    try:
        await wait_until_received(devices, total, 30)
    except AssertionError:
        print(report(mesh))
        raise
    for device in devices:
        device.judge()
    verdict = checker.verdict()
    assert verdict.acked == total and verdict.ok, verdict.summary()
    await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")
    held = [messages_of(mesh.regions[name]).get(conversation) for name in ("eu", "us", "ap")]
    assert [seq for seq, _ in held[1] or []] == list(range(1, total + 1))
    assert held[0] == held[1] == held[2]  # one message per seq in every store


async def _alice_and_carol(eu: RegionProcess, ap: RegionProcess, checker: DeliveryChecker,
                           devices: list[Device], also_in: RegionProcess | None = None,
                           ) -> tuple[Device, Device, str]:
    """alice's device in eu, carol's in ap (and, with `also_in`, a second device of
    alice there, last in `devices`), their chat homed in eu by alice's first send, which
    every device got."""
    alice = await region_device(eu, "alice", "a", checker, timeout_s=30)
    devices.append(alice)
    carol = await region_device(ap, "carol", "c", checker, timeout_s=30)
    devices.append(carol)
    if also_in is not None:
        devices.append(await region_device(also_in, "alice", "u", checker, timeout_s=30))
    conversation = await alice.client.direct("carol")
    checker.add_member(conversation, "alice")
    checker.add_member(conversation, "carol")
    await send_many(alice, conversation, 1, "first")  # homed in eu
    await wait_until_received(devices, 1, 20)
    return alice, carol, conversation


async def test_a_move_with_three_regions_waits_for_the_third_and_redirects_it(
        tmp_path: Path) -> None:
    """eu homes alice's chat with carol (ap); ap cannot read eu's log (its link to eu is
    cut) while alice sends. The call on us to take the home is refused: ap lacks eu's
    history below the hand-off head, and once the row moved eu's log would no longer
    serve it. Healed, the move succeeds while alice (eu) and carol (ap) send; carol's
    sends from ap then go to us (not eu), and the three stores hold the same message at
    every seq."""
    async with three_regions(tmp_path) as mesh:
        await mesh.all_see_each_other()
        eu, us, ap = (mesh.regions[name] for name in ("eu", "us", "ap"))
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            alice, carol, conversation = await _alice_and_carol(eu, ap, checker, devices)

            mesh.links[("ap", "eu")].block()  # ap reads nothing of eu's log
            await send_many(alice, conversation, 6, "ap-behind")  # confirmed by us
            status, refused = await asyncio.to_thread(move_home, us, conversation, "us")
            assert status == 503 and "region ap did not apply" in refused["error"], refused
            await send_many(alice, conversation, 2, "still-eu")  # eu sequences it again
            mesh.heal()
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")

            traffic = asyncio.gather(_paced(alice, conversation, 20, 0.05),
                                     _paced(carol, conversation, 10, 0.1))
            await asyncio.sleep(0.3)
            status, moved = await asyncio.to_thread(move_home, us, conversation, "us")
            assert status == 200, moved
            assert (moved["home"], moved["epoch"], moved["moved_from"]) == ("us", 2, "eu")
            assert not traffic.done()  # the move fell in the middle of both sending
            await asyncio.wait_for(traffic, 60)
            served_in_eu = _metric(eu, "chatplane_region_sends_served_total")
            served_in_us = _metric(us, "chatplane_region_sends_served_total")
            await send_many(carol, conversation, 5, "from-ap")  # forwarded to us
            assert _metric(eu, "chatplane_region_sends_served_total") == served_in_eu
            assert _metric(us, "chatplane_region_sends_served_total") >= served_in_us + 5

            await _judged_everywhere(mesh, devices, checker, conversation,
                                     1 + 6 + 2 + 20 + 10 + 5)
        finally:
            await _stop_all(devices)


async def test_what_the_old_home_sequenced_past_its_hand_off_reaches_no_third_region(
        tmp_path: Path) -> None:
    """sync durability, three regions: alice's sends are in flight in eu (the home; the
    test holds its SQLite write lock) when the call on us moves the chat; us cannot
    write its row yet (its store is held too) and its calls to eu and ap are cut. eu,
    released, commits alice's sends past the head it handed off at, under its own row:
    us takes the chat without them, so ap must not get them from eu's log. Applied
    there, carol would be pushed messages at the seqs us gives next (a seq naming two
    messages: issue 17's 'ack conflict d:alice:carol#13'). Then us takes the chat
    (telling nobody), the links heal, alice's device in us sends, eu learns the move
    from us's log and forwards alice's resends to us."""
    async with three_regions(tmp_path) as mesh:
        await mesh.all_see_each_other()
        eu, us, ap = (mesh.regions[name] for name in ("eu", "us", "ap"))
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            alice, _carol, conversation = await _alice_and_carol(
                eu, ap, checker, devices, also_in=us)
            alice_in_us = devices[-1]
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")

            # both locks are released within SQLite's 5 s busy timeout of the writes
            held_eu, held_us = (sqlite3.connect(tmp_path / name / "chatplane.db", timeout=10,
                                                isolation_level=None) for name in ("eu", "us"))
            try:
                held_eu.execute("BEGIN IMMEDIATE")
                held_us.execute("BEGIN IMMEDIATE")
                in_flight = asyncio.ensure_future(send_many(alice, conversation, 3, "held"))
                await asyncio.sleep(0.3)  # past eu's home check, waiting on its store
                moving = asyncio.ensure_future(asyncio.to_thread(move_home, us, conversation,
                                                                 "us"))
                await asyncio.sleep(1.0)  # handed off; us waits on its store to take
                assert not moving.done()
                mesh.links[("us", "eu")].block()  # us's row is offered to nobody
                mesh.links[("us", "ap")].block()
                held_eu.execute("ROLLBACK")  # eu commits alice's sends past the head
                await asyncio.to_thread(  # the first at least (the others may be refused)
                    wait_for, lambda: len(messages_of(eu)[conversation]) > 1, 4,
                    "eu committed a held send")
                await asyncio.sleep(1.0)  # ap reads eu's log meanwhile (its link is up)
                assert [seq for seq, _ in messages_of(ap)[conversation]] == [1], report(mesh)
                held_us.execute("ROLLBACK")
            finally:
                for store in (held_eu, held_us):
                    if store.in_transaction:
                        store.execute("ROLLBACK")
                    store.close()
            status, moved = await asyncio.wait_for(moving, 30)
            assert status == 200 and moved["home"] == "us", moved

            mesh.heal()
            await send_many(alice_in_us, conversation, 3, "in-us")  # us gives seqs 2..4
            await asyncio.wait_for(in_flight, 60)  # refused by eu, resent, sequenced by us
            await _judged_everywhere(mesh, devices, checker, conversation, 1 + 3 + 3)
        finally:
            await _stop_all(devices)


# -- moves at once (issue 17: two moves of different chats both succeed; two moves of one
# chat are serialized: the second is refused 409 while the first is under way) ----------

async def _chat(first: Device, other: Device, checker: DeliveryChecker) -> str:
    """`first`'s 1:1 chat with `other`, homed in `first`'s region by its first send."""
    conversation = await first.client.direct(other.user)
    checker.add_member(conversation, first.user)
    checker.add_member(conversation, other.user)
    await send_many(first, conversation, 1, "first")
    return conversation


async def _all_received(expected: dict[Device, int], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(len(device.received) < count for device, count in expected.items()):
        if loop.time() > deadline:
            raise AssertionError("timed out: received " + ", ".join(
                f"{d.user}/{d.device}={len(d.received)} of {n}" for d, n in expected.items()))
        await asyncio.sleep(0.05)


def _same_in_every_store(regions: list[RegionProcess], totals: dict[str, int]) -> None:
    """Every store holds one message at each seq 1..total of each chat, the same."""
    held = [messages_of(region) for region in regions]
    for conversation, total in totals.items():
        first = held[0].get(conversation)
        assert [seq for seq, _ in first or []] == list(range(1, total + 1)), conversation
        assert all(store.get(conversation) == first for store in held[1:]), conversation


async def _moved_at_once(moves: list[tuple[RegionProcess, str]]) -> list[tuple[int, Any]]:
    """The admin calls, each on the region that takes the chat, all at once."""
    return list(await asyncio.gather(*(asyncio.to_thread(move_home, region, chat, region.name)
                                       for region, chat in moves)))


async def test_two_regions_move_chats_both_ways_at_once_under_traffic(tmp_path: Path) -> None:
    """sync durability, two regions: two chats homed in eu move to us and one homed in us
    moves to eu, the three admin calls at once while both sides of every chat send. Each
    move succeeds (a move's held entry no longer times another move out), every device
    gets every message once and in order, both stores hold the same message at each seq."""
    with two_regions(tmp_path) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(sees, me, other.name), 20, f"{me.name} sees {other.name}")
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            for region, user in ((eu, "alice"), (us, "bob"), (eu, "carol"), (us, "dave")):
                devices.append(await region_device(region, user, user[0], checker,
                                                   timeout_s=30))
            alice, bob, carol, dave = devices
            one = await _chat(alice, bob, checker)  # eu
            two = await _chat(carol, dave, checker)  # eu
            three = await _chat(dave, alice, checker)  # us
            sends = [(alice, one, 15), (bob, one, 10), (carol, two, 15), (dave, two, 10),
                     (dave, three, 15), (alice, three, 10)]
            traffic = asyncio.gather(*(_paced(d, c, n, 0.05) for d, c, n in sends))
            await asyncio.sleep(0.3)
            answers = await _moved_at_once([(us, one), (us, two), (eu, three)])
            assert [status for status, _ in answers] == [200, 200, 200], answers
            assert [a["home"] for _, a in answers] == ["us", "us", "eu"], answers
            assert not traffic.done()  # the moves fell in the middle of the sends
            await asyncio.wait_for(traffic, 60)
            totals = {one: 26, two: 26, three: 26}
            await _all_received({alice: 52, bob: 26, carol: 26, dave: 52}, 30)
            for device in devices:
                device.judge()
            verdict = checker.verdict()
            assert verdict.acked == 78 and verdict.ok, verdict.summary()
            await asyncio.to_thread(wait_for, lambda: applied_both_ways(eu, us), 30, "logs applied")
            _same_in_every_store([eu, us], totals)
        finally:
            await _stop_all(devices)


async def test_three_regions_move_three_chats_at_once_under_traffic(tmp_path: Path) -> None:
    """sync durability, three regions: alice's chat with carol (eu) moves to us, bob's
    with carol (us) to ap and alice's with bob (eu) to ap, the three admin calls at once
    while every member sends. Each succeeds; the checker is clean and the three stores
    hold the same message at each seq of each chat."""
    async with three_regions(tmp_path) as mesh:
        await mesh.all_see_each_other()
        eu, us, ap = (mesh.regions[name] for name in ("eu", "us", "ap"))
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            for region, user in ((eu, "alice"), (us, "bob"), (ap, "carol")):
                devices.append(await region_device(region, user, user[0], checker,
                                                   timeout_s=30))
            alice, bob, carol = devices
            one = await _chat(alice, carol, checker)  # eu
            two = await _chat(bob, carol, checker)  # us
            three = await _chat(alice, bob, checker)  # eu
            sends = [(alice, one, 12), (carol, one, 8), (bob, two, 12), (carol, two, 8),
                     (alice, three, 12), (bob, three, 8)]
            traffic = asyncio.gather(*(_paced(d, c, n, 0.05) for d, c, n in sends))
            await asyncio.sleep(0.3)
            answers = await _moved_at_once([(us, one), (ap, two), (ap, three)])
            assert [status for status, _ in answers] == [200, 200, 200], (answers, report(mesh))
            assert not traffic.done()
            await asyncio.wait_for(traffic, 60)
            try:
                await _all_received({alice: 42, bob: 42, carol: 42}, 30)
            except AssertionError:
                print(report(mesh))
                raise
            for device in devices:
                device.judge()
            verdict = checker.verdict()
            assert verdict.acked == 63 and verdict.ok, verdict.summary()
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")
            _same_in_every_store([eu, us, ap], {one: 21, two: 21, three: 21})
        finally:
            await _stop_all(devices)


async def test_one_chat_moved_twice_at_once_is_refused_409_until_the_first_is_over(
        tmp_path: Path) -> None:
    """Three regions: the move of alice's chat with carol (eu) to us is under way (us
    cannot take it yet: its store is held) when the calls to move it to ap, and to us
    again, come: both are refused 409 (the home is being moved), neither stops nor
    resumes the first, which then succeeds at epoch 2; a move to ap after it takes the
    chat from us at epoch 3. Alice and carol send throughout; the checker is clean."""
    async with three_regions(tmp_path) as mesh:
        await mesh.all_see_each_other()
        eu, us, ap = (mesh.regions[name] for name in ("eu", "us", "ap"))
        checker = DeliveryChecker()
        devices: list[Device] = []
        try:
            alice, carol, conversation = await _alice_and_carol(eu, ap, checker, devices)
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")
            traffic = asyncio.gather(_paced(alice, conversation, 20, 0.1),
                                     _paced(carol, conversation, 15, 0.15))
            held_us = sqlite3.connect(tmp_path / "us" / "chatplane.db", timeout=10,
                                      isolation_level=None)
            try:
                held_us.execute("BEGIN IMMEDIATE")  # us applies nothing: its move waits
                first = asyncio.ensure_future(asyncio.to_thread(move_home, us, conversation,
                                                                "us"))
                await asyncio.sleep(0.5)  # eu handed it off to us
                assert not first.done()
                status, to_ap = await asyncio.to_thread(move_home, ap, conversation, "ap")
                assert status == 409 and "being moved to region us" in to_ap["error"], to_ap
                status, again = await asyncio.to_thread(move_home, us, conversation, "us")
                assert status == 409 and "under way" in again["error"], again
                await asyncio.sleep(1.0)
                assert not first.done()
            finally:
                held_us.execute("ROLLBACK")
                held_us.close()
            status, moved = await asyncio.wait_for(first, 30)
            assert status == 200, moved
            assert (moved["home"], moved["epoch"], moved["moved_from"]) == ("us", 2, "eu")
            status, moved = await asyncio.to_thread(move_home, ap, conversation, "ap")
            assert status == 200, moved
            assert (moved["home"], moved["epoch"], moved["moved_from"]) == ("ap", 3, "us")
            await asyncio.wait_for(traffic, 60)
            await _judged_everywhere(mesh, devices, checker, conversation, 1 + 20 + 15)
        finally:
            await _stop_all(devices)
