"""Coalescing of concurrent calls into one RPC (a login storm's heads and
routes; a cluster's sends and inbox fan-outs: `SharedCalls`).

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


R = TypeVar("R")
A = TypeVar("A")


class SharedCalls(Generic[R, A]):
    """Requests to one address that share calls: a gRPC call costs far more
    CPU than a small request it carries (docs/benchmarks.md, "`cluster up`:
    CPU per message per tier"). Up to `in_flight` calls per address; the
    requests made meanwhile wait for one of them to return and go together
    (at most `max_batch` requests and about `max_bytes`). A request that
    finds fewer calls in flight goes at once. `call(address, requests)`
    answers each request in order, or raises for all of them."""

    def __init__(self, call: Callable[[str, list[R]], Awaitable[list[A]]],
                 size: Callable[[R], int], *, in_flight: int = 2, max_batch: int = 64,
                 max_bytes: int = 1024 * 1024) -> None:
        self.call = call
        self.size = size
        self.in_flight = in_flight
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.calls = 0
        self._waiting: dict[str, list[tuple[R, asyncio.Future[A]]]] = {}
        self._running: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def ask(self, address: str, request: R) -> A:
        future: asyncio.Future[A] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(address, []).append((request, future))
        if self._running.get(address, 0) < self.in_flight:
            self._running[address] = self._running.get(address, 0) + 1
            task = asyncio.get_running_loop().create_task(self._drain(address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, address: str) -> None:
        try:
            while self._waiting.get(address):
                waiting = self._waiting[address]
                batch: list[tuple[R, asyncio.Future[A]]] = []
                size = 0
                while waiting and len(batch) < self.max_batch and size < self.max_bytes:
                    request, future = waiting.pop(0)
                    if not future.done():  # (its caller stopped waiting: never sent)
                        batch.append((request, future))
                        size += self.size(request)
                if not waiting:
                    del self._waiting[address]
                if batch:
                    await self._send(address, batch)
        finally:
            self._running[address] -= 1
            if not self._running[address]:  # cancelled: nothing may wait for a call
                for _, future in self._waiting.pop(address, []):
                    future.cancel()

    async def _send(self, address: str, batch: list[tuple[R, asyncio.Future[A]]]) -> None:
        self.calls += 1
        try:
            answers = await self.call(address, [request for request, _ in batch])
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers to {len(batch)} requests")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # (a caller that left does not read it)
            return
        except BaseException:  # cancelled: its callers are too
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
