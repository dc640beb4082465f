"""The work queue: coalescing pokes, one pass per key at a time, backoff, resync, forget."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import kopf
import pytest

from chatplane_operator import handlers
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
    # poke while the first pass runs (waited for, not slept for: a loaded machine may
    # start it late): both pokes coalesce into one more pass
    await _until(lambda: A in active)
    queue.poke(A)
    queue.poke(A)
    await _until(lambda: runs == 2 and not active)
    await asyncio.sleep(0.3)  # a third pass would start within the debounce
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


async def test_a_wedged_pass_shows_as_a_stalled_queue() -> None:
    release = asyncio.Event()

    done: set[Key] = set()

    async def work(key: Key) -> bool:
        if key == A:
            await release.wait()  # wedged until released
        done.add(key)
        return True

    queue = WorkQueue(work, resync=60, debounce=0.01)
    queue.poke(A)
    queue.poke(B)
    task = asyncio.create_task(queue.serve())
    while B not in done:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert queue.depth() == 1  # A runs; B ran and is not due again for 60 s
    assert queue.stalled_for() >= 0.3
    assert queue.stalled_for(time.monotonic() + 700) > 600  # what the liveness probe sees
    release.set()
    while A not in done:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert queue.depth() == 0 and queue.stalled_for() == 0.0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_liveness_probe_fails_on_a_stalled_queue() -> None:
    async def work(key: Key) -> bool:
        return True

    queue = WorkQueue(work, resync=60)
    runtime = handlers.Runtime(reconciler=None, queue=queue)  # type: ignore[arg-type]
    memo = kopf.Memo(runtime=runtime)
    assert handlers.workqueue(memo=memo) == {"depth": 0, "oldestSeconds": 0.0}
    queue.poke(A, delay=-(handlers.STALLED_S + 5))  # overdue that long: nothing serves it
    with pytest.raises(RuntimeError, match="work queue stalled"):
        handlers.workqueue(memo=memo)


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.005)
