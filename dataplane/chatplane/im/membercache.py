"""Conversations and member lists the im keeps in memory, under the hot tier's
W-TinyLFU admission (im/admission.py).

Each entry weighs the member ids it holds (plus one), so the bound is on ids,
not entries: a 10,000-member group counts as what it costs. A hot group stays
while a one-off pass over many cold conversations (a broadcast into every
user's events conversation) is refused entry instead of flushing it, which
the bounded dictionaries cleared when full did. Whether an entry is still
right is the versions' business (im/invalidation.py), not this cache's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.im.admission import WTinyLfu

V = TypeVar("V")


class MemberCache(Generic[V]):
    def __init__(self, name: str, capacity_ids: int) -> None:
        self.name = name  # in the metric names: chatplane_im_<name>_cache_*
        self.capacity_ids = capacity_ids
        self._entries: dict[str, V] = {}
        self._policy = WTinyLfu(capacity_ids)
        self.hits = 0
        self.misses = 0

    def get(self, key: str, valid: Callable[[V], bool]) -> V | None:
        """The entry if `valid` (its version still good), else None: a miss."""
        self._policy.record(key)
        value = self._entries.get(key)
        if value is None or not valid(value):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def peek(self, key: str) -> V | None:
        """The entry whatever its version, not counted as an access."""
        return self._entries.get(key)

    def put(self, key: str, value: V, member_ids: int) -> None:
        self._entries[key] = value
        for gone in self._policy.put(key, member_ids + 1):
            self._entries.pop(gone, None)

    def pop(self, key: str) -> None:
        if self._entries.pop(key, None) is not None:
            self._policy.remove(key)

    def clear(self) -> None:
        for key in self._entries:
            self._policy.remove(key)
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def member_ids(self) -> int:
        return self._policy.weight

    def families(self) -> Iterator[Metric]:
        prefix = f"chatplane_im_{self.name}_cache"
        yield metrics.counter(f"{prefix}_hits_total", f"{self.name} lookups served from memory",
                              self.hits)
        yield metrics.counter(f"{prefix}_misses_total", f"{self.name} lookups read from storage",
                              self.misses)
        yield metrics.counter(f"{prefix}_evictions_total", f"{self.name} entries evicted",
                              self._policy.evictions)
        yield metrics.counter(f"{prefix}_rejections_total",
                              f"{self.name} newcomers refused by admission", self._policy.rejections)
        yield metrics.gauge(f"{prefix}_member_ids", f"member ids held by the {self.name} cache",
                            self.member_ids)
