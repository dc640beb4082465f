"""Admin moves of a conversation's home (docs/architecture.md, "Moving a home") where the
new home is behind: real `chatplane up` regions, the SDK and the delivery checker.

The new home may give out seq n+1 only once it holds seq n and every seq before it: it
waits until it applied the old home's log to the head the old home handed off at. With
two regions the new home is held behind (the test holds its SQLite write lock, so it
cannot apply anything) while the old home acks sends (`async`). (Moves with three
regions are refused for now: docs/architecture.md, "Moving a home".)"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from pathlib import Path

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
