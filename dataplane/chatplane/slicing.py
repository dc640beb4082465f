"""Cooperative time slices for long loops on the event loop.

A loop over thousands of connections (a large group's fan-out, the gateway's
deadline sweep) would hold the event loop for tens or hundreds of
milliseconds, and every other message would wait that long. Such a loop looks
at a `TimeSlice` every few items and, once it has held the loop for its slice,
lets everything else that is ready run (`await pause()`), so other work waits
at most one slice. `held()` is how long the loop ran itself, not counting the
time others ran in between; `cpu()` the CPU time of its slices (less than
`held()` when the machine took the process off the CPU mid-slice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_SLICE_MS = 1.0


class TimeSlice:
    __slots__ = ("_began", "_cpu", "_cpu_began", "_held", "limit_s")

    def __init__(self, slice_ms: float = DEFAULT_SLICE_MS) -> None:
        self.limit_s = slice_ms / 1000
        self._held = 0.0
        self._cpu = 0.0
        self._began = time.perf_counter()
        self._cpu_began = time.thread_time()

    def over(self) -> bool:
        """The current slice is used up: `await pause()`."""
        return time.perf_counter() - self._began >= self.limit_s

    async def pause(self) -> None:
        """Let whatever else is ready run, then start a new slice."""
        await self.wait(asyncio.sleep(0))

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """Await something (what else is ready; the group writer's thread):
        the time waiting is not this loop's, and a new slice starts after."""
        self._held += time.perf_counter() - self._began
        self._cpu += time.thread_time() - self._cpu_began
        try:
            return await awaitable
        finally:
            self._began = time.perf_counter()
            self._cpu_began = time.thread_time()

    def held(self) -> float:
        """Seconds this loop held the event loop so far."""
        return self._held + time.perf_counter() - self._began

    def spent_elsewhere(self, cpu_s: float) -> None:
        """CPU another thread spent on this loop's behalf: `cpu()` counts it."""
        self._cpu += cpu_s

    def cpu(self) -> float:
        """CPU seconds of this loop's slices so far (and of work done for it
        elsewhere, `spent_elsewhere`)."""
        return self._cpu + time.thread_time() - self._cpu_began
