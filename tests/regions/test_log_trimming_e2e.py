"""Trimming the replicated log across two real `chatplane up` regions
(docs/architecture.md, "Regions", "Trimming the log"): once the other region applied a
region's log, its entries are deleted and replication goes on from there; a stopped peer
holds the trim back, so after a restart it still gets everything; a peer whose store was
lost asks for trimmed positions and is refused FAILED_PRECONDITION, which both regions
report, instead of being served a log with a hole."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from tests.support.regions import SHARED_KEY, RegionProcess, region_device, two_regions, wait_for
from tests.support.traffic import Device, send_many

pytestmark = pytest.mark.slow

signer = TokenSigner(SHARED_KEY)


@contextmanager
def _regions(base: Path, mode: str) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    with two_regions(base, {"CHATPLANE_REGION_DURABILITY": mode}) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(lambda r, p: r.peers()[p]["ok"], me, other.name), 20,
                     f"{me.name} sees {other.name}")
        yield eu, us


def _log(region: RegionProcess) -> dict[str, Any]:
    status, text = region.get("/v1/peers")
    assert status == 200, text
    log: dict[str, Any] = json.loads(text)["log"]
    return log


def _metric(region: RegionProcess, line_start: str) -> float | None:
    status, text = region.get("/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `check` (blocking: run in a thread) without holding up the clients' loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await asyncio.to_thread(check)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {got!r})")
        await asyncio.sleep(0.1)


def _all_trimmed(region: RegionProcess, head: int = 1) -> dict[str, Any] | None:
    """The log's report once it reached `head` and retains nothing."""
    log = _log(region)
    return log if log["head"] >= head and log["entries"] == 0 else None


_device = region_device


async def _chat(a: Device, b: Device, checker: DeliveryChecker) -> str:
    conversation = await a.client.direct(b.user)
    assert await b.client.direct(a.user) == conversation
    checker.add_member(conversation, a.user)
    checker.add_member(conversation, b.user)
    return conversation


async def _history(device: Device, conversation: str) -> list[tuple[int, str]]:
    return [(m.seq, m.message_id) for m in await device.client.history(conversation, limit=200)]


async def test_the_log_shrinks_once_applied_and_replication_goes_on(tmp_path: Path) -> None:
    """Chats homed in each region (sync durability), traffic both ways in two rounds:
    after each, both logs are trimmed to their heads, and every device got every
    message once, in order, with the same history in both regions."""
    with _regions(tmp_path, "sync") as (eu, us):
        checker = DeliveryChecker()
        devices = [await _device(eu, "alice", "a", checker), await _device(us, "bob", "b", checker),
                   await _device(us, "carol", "c", checker), await _device(eu, "dave", "d", checker)]
        alice, bob, carol, dave = devices
        try:
            in_eu = await _chat(alice, bob, checker)
            in_us = await _chat(carol, dave, checker)
            await send_many(alice, in_eu, 1, "home")  # homed in eu
            await send_many(carol, in_us, 1, "home")  # homed in us
            trimmed_before = {"eu": 0, "us": 0}
            for round_ in range(2):
                await asyncio.gather(send_many(alice, in_eu, 30, f"a{round_}"),
                                     send_many(bob, in_eu, 20, f"b{round_}"),  # forwarded
                                     send_many(carol, in_us, 30, f"c{round_}"),
                                     send_many(dave, in_us, 20, f"d{round_}"))
                for region in (eu, us):
                    # each log holds its own and the other's messages (the trigger logs
                    # every homed chat): all applied by the peer, all gone
                    log = await _until(functools.partial(
                        _all_trimmed, region, 2 + 100 * (round_ + 1)), 20,
                        f"{region.name}'s log trimmed")
                    assert log["trimmed_to"] == log["head"]
                    assert log["trimmed_to"] > trimmed_before[region.name]
                    assert log["oldest_retained"] is None and log["held_back_by"] == []
                    assert log["refused_reads"] == {}
                    trimmed_before[region.name] = log["trimmed_to"]
                    assert _metric(region, "chatplane_region_log_entries") == 0
                    assert _metric(region, "chatplane_region_log_trimmed_position") == log[
                        "trimmed_to"]
            count = 1 + 2 * 50  # per chat; every device gets its own chat's messages
            await _until(lambda: all(len(d.received) >= count for d in devices), 15,
                         "every device got every message")
            for conversation, pair in ((in_eu, (alice, bob)), (in_us, (dave, carol))):
                histories = [await _history(d, conversation) for d in pair]
                assert len(histories[0]) == 101 and histories[0] == histories[1]
                for d, history in zip(pair, histories, strict=True):
                    checker.check_history(d.user, d.device, conversation, history)
            verdict = checker.verdict()
            assert verdict.ok and verdict.acked == 202, verdict.summary()
        finally:
            for device in devices:
                await device.stop()


async def test_a_stopped_peer_holds_the_trim_back_and_a_lost_one_is_refused(
        tmp_path: Path) -> None:
    """async durability (eu acks alone while us is down): us stops, eu's log keeps what
    us has not applied (us holds the trim back), us restarts and gets all of it, then
    eu trims it. us loses its store: asking from position 0 it is refused
    FAILED_PRECONDITION, reported by us (trimmed_past_cursor) and by eu (refused_reads)."""
    with _regions(tmp_path, "async") as (eu, us):
        checker = DeliveryChecker()
        alice = await _device(eu, "alice", "a", checker)
        # not judged: it goes away with its region; the one after the restart is
        bob = await _device(us, "bob", "b", DeliveryChecker())
        devices = [alice, bob]
        try:
            chat = await _chat(alice, bob, checker)
            await send_many(alice, chat, 20, "before")
            trimmed = (await _until(functools.partial(_all_trimmed, eu), 20,
                                    "eu's log trimmed"))["trimmed_to"]
            await bob.stop()
            devices.remove(bob)
            us.stop()
            await send_many(alice, chat, 30, "while-down")  # acked by eu alone (async)
            await asyncio.sleep(2.5)  # > 2 trim periods: nothing of it may go
            log = _log(eu)
            assert log["trimmed_to"] == trimmed and log["entries"] == log["head"] - trimmed >= 30
            assert log["held_back_by"] == ["us"] and log["trim_floor"] == trimmed
            assert _metric(eu, "chatplane_region_log_entries") == log["entries"]

            us.start()
            bob = await _device(us, "bob", "b", checker)
            devices.append(bob)
            await _until(lambda: us.peers()["eu"]["replication"]["applied_to"] >= log["head"],
                         20, "us caught up from its cursor")
            history = await _history(bob, chat)
            assert len(history) == 50
            assert history == await _history(alice, chat)
            checker.check_history("bob", "b", chat, history)
            await _until(functools.partial(_all_trimmed, eu), 20, "eu's log trimmed again")
            verdict = checker.verdict()
            assert verdict.ok and verdict.acked == 50, verdict.summary()

            await bob.stop()
            devices.remove(bob)
            us.stop()
            shutil.rmtree(us.data_dir)  # the store is lost: the cursor with it
            us.start()
            refused = await _until(lambda: us.peers()["eu"]["replication"]["trimmed_past_cursor"]
                                   and us.peers()["eu"]["replication"], 20,
                                   "us told it asks for trimmed positions")
            assert refused["error"].startswith("FAILED_PRECONDITION")
            assert re.search(r"position 0 was trimmed", refused["error"]), refused["error"]
            assert refused["applied_to"] == 0 and not refused["connected"]
            assert _metric(us, 'chatplane_region_replication_trimmed{peer="eu"}') == 1
            assert _log(eu)["refused_reads"]["us"] >= 1
            assert (_metric(eu, 'chatplane_region_log_reads_refused_total{peer="us"}')
                    or 0) >= 1
        finally:
            for device in devices:
                await device.stop()
