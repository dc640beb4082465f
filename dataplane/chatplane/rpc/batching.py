"""Coalescing of concurrent calls into one RPC (a login storm's heads and routes).

During a reconnect storm thousands of logins each need one inbox head from
im and one route written by state. A `Coalescer` gathers what is asked
while the previous batch is in flight (at most `max_batch`), sends it as one
call, and hands each caller its own answer or the batch's error. An idle
caller pays no wait: a request that finds nothing in flight goes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    def __init__(self, call: Callable[[Sequence[K]], Awaitable[dict[K, V]]],
                 max_batch: int = 500) -> None:
        self.call = call
        self.max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[V]]] = []
        self._running = False
        self.calls = 0

    async def get(self, key: K) -> V:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:self.max_batch]
                del self._waiting[:self.max_batch]
                keys = list(dict.fromkeys(k for k, _ in batch))
                self.calls += 1
                try:
                    answers = await self.call(keys)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in batch:
                    if future.done():
                        continue
                    if key in answers:
                        future.set_result(answers[key])
                    else:
                        future.set_exception(KeyError(key))
        finally:
            self._running = False
