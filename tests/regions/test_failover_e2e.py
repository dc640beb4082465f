"""Failover of a whole region with real processes (docs/architecture.md, "Failover"):
two `chatplane up` regions in `sync` durability sharing a failover witness (`chatplane
witness`: without one failover is off), devices in both sending into chats
homed in eu, kill -9 of eu. The SDK clients, given both regions' URLs, move to us; us
takes over eu's homes after the detection time and acks sends again; the checker is
clean for everything acked (nothing lost, nothing twice, one message per seq). eu is
then started again on its store: it converges with us and forwards its clients' sends
to us, sequencing none of the chats it lost."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.bench.failover import history_of, run_failover
from chatplane.checker import DeliveryChecker
from tests.support.regions import (
    FAST_PROBES,
    SHARED_KEY,
    RegionProcess,
    WitnessProcess,
    region_device,
    sees,
    two_regions,
    wait_for,
)
from tests.support.traffic import Device

pytestmark = pytest.mark.slow

DETECT_S = 3.0  # CHATPLANE_FAILOVER_AFTER_S here (default 5 s: docs/benchmarks.md)
signer = TokenSigner(SHARED_KEY)


async def test_kill_of_the_home_region_fails_over_and_the_region_returns_as_a_follower(
        tmp_path: Path) -> None:
    run = await run_failover(tmp_path, after_kill_s=4.0,
                             env={**FAST_PROBES, "CHATPLANE_FAILOVER_AFTER_S": str(DETECT_S)})
    assert run.acked_before > 20 and run.acked_after > 20, run
    # detection (counted from the last answered Hello, up to one probe interval before
    # the kill), plus the clients' reconnect and resend, within the target
    assert DETECT_S - 0.5 <= run.failover_s <= 10.0, run.failover_s
    assert run.verdict.ok, run.verdict.summary()
    # the kill's takeover is the last (a region slow to start may have been taken over,
    # with no homes, and lifted before the traffic began)
    takeover = run.takeover["takeovers"][-1]
    assert run.takeover["lost"] == ["eu"] and takeover["homes"] >= 4, run.takeover
    assert run.grants[-1].endswith(f"granted us the takeover of eu (grant {takeover['grant']})"), (
        run.grants, run.takeover)
    assert run.histories_equal
    assert run.late_regions == ["eu"] * 4, run  # each late send made through eu
    assert run.forwarded_by_eu == 4 and run.sequenced_by_eu == 0, run


async def test_a_frozen_home_taken_over_learns_it_and_its_unconfirmed_sends_are_superseded(
        tmp_path: Path) -> None:
    """eu, the home, is stopped (SIGSTOP) past the detection time while devices in us
    send into its chats (forwarded to it): us takes the homes over and acks the resends.
    eu, continued, still believes it homes the chats and serves what it sequenced just
    before the stop under the old epoch: us skips those entries and tells eu the new
    home first, so eu never acks them; eu then applies us's log and its store holds
    us's history seq for seq (its own unconfirmed messages superseded)."""
    witness = WitnessProcess(tmp_path / "witness")
    env = {"CHATPLANE_REGION_DURABILITY": "sync", "CHATPLANE_FAILOVER_AFTER_S": str(DETECT_S),
           "CHATPLANE_REGION_SYNC_TIMEOUT_S": "1", "CHATPLANE_FAILOVER_WITNESS": witness.endpoint}
    witness.start()
    with contextlib.ExitStack() as stack:
        stack.callback(witness.stop)
        eu, us = stack.enter_context(two_regions(tmp_path, env))
        for me, other in ((eu, us), (us, eu)):
            await asyncio.to_thread(wait_for, functools.partial(sees, me, other.name), 20,
                                    f"{me.name} sees {other.name}")
        checker = DeliveryChecker()
        devices: list[Device] = []
        chats = []
        try:
            for i in range(3):
                placer = await region_device(eu, f"p{i}", "d", DeliveryChecker(), timeout_s=30)
                chat = await placer.client.direct(f"u{i}")
                await placer.client.send_text(chat, "home")  # homes the chat in eu
                await placer.stop()
                for user in (f"p{i}", f"u{i}"):  # both members connected to us from now on
                    device = await region_device(us, user, "us", checker, timeout_s=30)
                    devices.append(device)
                    chats.append(chat)
                    checker.add_member(chat, user)
            stop = asyncio.Event()

            async def send(device: Device, chat: str) -> None:
                i = 0
                while not stop.is_set():
                    ack = await device.client.send_text(chat, f"{device.user}-{i}")
                    checker.record_ack(device.user, device.device, chat, ack.seq,
                                       ack.message_id, cid=ack.cid)
                    i += 1
                    await asyncio.sleep(0.05)

            traffic = [asyncio.ensure_future(send(d, c))
                       for d, c in zip(devices, chats, strict=True)]
            await asyncio.sleep(1.5)
            assert eu.proc is not None
            os.kill(eu.proc.pid, signal.SIGSTOP)
            await asyncio.to_thread(wait_for, lambda: _lost(us), DETECT_S + 10,
                                    "us takes eu's homes over")
            await asyncio.sleep(1.0)
            os.kill(eu.proc.pid, signal.SIGCONT)
            await asyncio.to_thread(wait_for, lambda: _metric(eu, "chatplane_region_peer_lost")
                                    == 0 and not _lost(us), 20, "eu and us see each other")
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*traffic), 60)
            await asyncio.sleep(1.0)
            for device in devices:
                device.judge()
            verdict = checker.verdict()
            assert verdict.ok and verdict.acked > 60, verdict.summary()
            # eu learnt the new home of every chat and holds us's history, seq for seq
            for i in range(3):
                there = devices[2 * i]
                reader = await region_device(eu, f"p{i}", "eu-reader", DeliveryChecker(), timeout_s=30)
                try:
                    for _ in range(100):
                        theirs = [(m.seq, m.message_id) for m in await history_of(there.client, chats[2 * i])]
                        ours = [(m.seq, m.message_id) for m in await history_of(reader.client, chats[2 * i])]
                        if theirs == ours:
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError(f"eu's history of {chats[2 * i]} differs from us's")
                finally:
                    await reader.stop()
            skipped = _metric(us, "chatplane_region_stale_entries_skipped_total")
            print(f"\nfrozen home: {verdict.acked} acked; us skipped eu's entries under the"
                  f" old epoch {skipped:.0f} times")
        finally:
            for device in devices:
                await device.stop()


def _lost(region: RegionProcess) -> bool:
    return bool(json.loads(region.get("/v1/peers")[1])["failover"]["lost"])


def _metric(region: RegionProcess, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200, text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((f"{name} ", f"{name}{{")))
