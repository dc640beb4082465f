"""The work queue: coalescing pokes, one pass per key at a time, backoff, resync, forget."""

from __future__ import annotations

import asyncio
import itertools
import time

from chatplane_operator.queueing import Backoff, Key, WorkQueue

A: Key = ("ns", "a")
B: Key = ("ns", "b")


async def _serve(queue: WorkQueue, seconds: float) -> None:
    task = asyncio.create_task(queue.serve())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_pokes_coalesce_into_one_pass() -> None:
    runs: list[Key] = []

    async def work(key: Key) -> bool:
        runs.append(key)
        return True

    queue = WorkQueue(work, resync=60, debounce=0.05)
    for _ in range(20):
        queue.poke(A)
    queue.poke(B)
    await _serve(queue, 0.3)
    assert sorted(runs) == [A, B]


async def test_a_key_never_runs_twice_at_once_and_reruns_after_a_poke() -> None:
    active: set[Key] = set()
    overlaps = 0
    runs = 0

    async def work(key: Key) -> bool:
        nonlocal overlaps, runs
        overlaps += key in active
        active.add(key)
        runs += 1
        await asyncio.sleep(0.1)
        active.discard(key)
        return True

    queue = WorkQueue(work, resync=60, debounce=0.01)
    queue.poke(A)
    task = asyncio.create_task(queue.serve())
    await asyncio.sleep(0.05)
    queue.poke(A)  # while running: coalesced into one more pass
    queue.poke(A)
    await asyncio.sleep(0.4)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert overlaps == 0
    assert runs == 2


async def test_failures_back_off_and_success_resets() -> None:
    times: list[float] = []

    async def work(key: Key) -> bool:
        times.append(time.monotonic())
        return len(times) >= 3

    queue = WorkQueue(work, resync=60, debounce=0.0,
                      backoff=Backoff(first=0.1, factor=2.0, cap=1.0))
    queue.poke(A)
    await _serve(queue, 0.6)
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.09 <= gaps[0] < 0.2 and 0.19 <= gaps[1] < 0.35
    assert queue.failures(A) == 0


async def test_success_comes_back_after_resync_and_gone_is_forgotten() -> None:
    runs: list[Key] = []

    async def work(key: Key) -> bool | None:
        runs.append(key)
        return None if key == B else True

    queue = WorkQueue(work, resync=0.1, debounce=0.0)
    queue.poke(A)
    queue.poke(B)
    await _serve(queue, 0.35)
    assert runs.count(B) == 1
    assert runs.count(A) >= 3


def test_backoff_is_capped() -> None:
    backoff = Backoff(first=1, factor=2, cap=10)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
