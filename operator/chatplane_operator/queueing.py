"""A coalescing, rate-aware work queue of ChatCluster keys, with per-key retry backoff.

Watch events only *poke* a key; one worker task runs at most `concurrency` reconciles at a
time and never two for the same key. Pokes that arrive while a key is running make it run
once more afterwards (coalesced). A failed pass retries after an exponential backoff; a
successful one comes back after `resync` seconds (drift that no watch reported is repaired
then). No kopf daemon or timer is used, because those put a finalizer on the resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable

Key = tuple[str, str]  # (namespace, name)
# True: success; a float: success, come back after that many seconds (a rollout under way);
# False: failure (backoff); None: the object is gone
Work = Callable[[Key], Awaitable[bool | float | None]]


@dataclasses.dataclass(frozen=True)
class Backoff:
    first: float = 1.0
    factor: float = 2.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * self.factor ** max(0, failures - 1)))


class WorkQueue:
    def __init__(self, work: Work, *, resync: float = 60.0, debounce: float = 0.05,
                 concurrency: int = 4, backoff: Backoff | None = None) -> None:
        self._work = work
        self._resync = resync
        self._debounce = debounce
        self._backoff = backoff or Backoff()
        self._due: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._running: set[Key] = set()
        self._started: dict[Key, float] = {}  # running key -> when its pass started
        self._again: set[Key] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def poke(self, key: Key, delay: float | None = None) -> None:
        """Run `key` soon (after the debounce), or after `delay` seconds."""
        when = time.monotonic() + (self._debounce if delay is None else delay)
        if key in self._running:
            self._again.add(key)
            return
        self._due[key] = min(self._due.get(key, when), when)
        self._wake.set()

    def forget(self, key: Key) -> None:
        self._due.pop(key, None)
        self._failures.pop(key, None)
        self._again.discard(key)

    def failures(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def depth(self, now: float | None = None) -> int:
        """Keys running or due now (the work waiting on the workers)."""
        now = time.monotonic() if now is None else now
        return len(self._running) + sum(1 for k, when in self._due.items()
                                        if when <= now and k not in self._running)

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds the oldest work has waited: a pass running since, or a key overdue by
        (0 when nothing is late). A healthy queue stays within one pass's time."""
        now = time.monotonic() if now is None else now
        late = [now - t for t in self._started.values()]
        late += [now - when for k, when in self._due.items() if k not in self._running]
        return max([0.0, *late])

    async def _run(self, key: Key) -> None:
        try:
            async with self._slots:
                ok: bool | float | None = False
                try:
                    ok = await self._work(key)
                finally:
                    self._running.discard(key)
                    self._started.pop(key, None)
                if ok is None:
                    self.forget(key)
                    return
                if ok:
                    self._failures.pop(key, None)
                    delay = self._resync if ok is True else min(self._resync, float(ok))
                else:
                    self._failures[key] = self._failures.get(key, 0) + 1
                    delay = self._backoff.delay(self._failures[key])
                if key in self._again:
                    self._again.discard(key)
                    delay = self._debounce if ok else delay
                self.poke(key, delay)
        finally:
            self._wake.set()

    async def serve(self) -> None:
        """Run forever (until cancelled), starting due keys."""
        try:
            while True:
                now = time.monotonic()
                for key, when in sorted(self._due.items(), key=lambda kv: kv[1]):
                    if when <= now and key not in self._running:
                        del self._due[key]
                        self._running.add(key)
                        self._started[key] = now  # waiting for a worker counts too
                        task = asyncio.create_task(self._run(key))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                pending = [w for k, w in self._due.items() if k not in self._running]
                timeout = max(0.0, min(pending) - time.monotonic()) if pending else None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
