"""When to look at a connection's deadlines again: buckets of one second.

A gateway with 100,000 connections cannot look at each of them every second
(the heartbeat deadline is three intervals, 45 s by default: the look finds
nothing 44 times in 45). Each connection sits in the bucket of the second in
which its earliest deadline could pass (`ServerSession.check_due_ms`); a
sweep takes the buckets that are due, ticks those connections, and puts the
ones still open back under their new time. A look can come early (the
client sent frames since: it is only put back), never late by more than a
round of the sweep.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

BUCKET_MS = 1000


class DeadlineBuckets(Generic[T]):
    __slots__ = ("_buckets", "_keys", "_swept")

    def __init__(self) -> None:
        self._buckets: dict[int, list[T]] = {}
        self._keys: list[int] = []  # heap of the buckets' seconds
        self._swept = -(2**62)  # the last second whose bucket was emptied

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, item: T, due_ms: float) -> None:
        """Look at `item` at the first sweep at or after the second `due_ms`
        is in; if that second was swept already, at the next sweep."""
        key = max(int(due_ms // BUCKET_MS), self._swept + 1)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = []
            heapq.heappush(self._keys, key)
        bucket.append(item)

    def pop_due(self, now_ms: float) -> list[T]:
        """Every item whose bucket began at or before `now_ms`."""
        now_key = int(now_ms // BUCKET_MS)
        due: list[T] = []
        while self._keys and self._keys[0] <= now_key:
            due += self._buckets.pop(heapq.heappop(self._keys))
        self._swept = max(self._swept, now_key)
        return due
