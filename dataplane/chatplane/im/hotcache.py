"""Recent messages of busy conversations, in memory (the hot tier).

When 10,000 members of a group pull the same new messages, they read them
from here, not from storage 10,000 times. Per conversation the cache holds a
contiguous run of the latest messages (appends extend it; anything that does
not follow the cached tail restarts it). Which conversations stay is decided
by W-TinyLFU admission (im/admission.py): hot conversations are kept, and a
one-off scan (one message into each of many cold conversations) is refused
entry instead of flushing them. The total stays under `max_messages`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.im.admission import WTinyLfu
from chatplane.storage.base import StoredMessage

PER_CONVERSATION = 1000


class HotCache:
    def __init__(self, max_messages: int = 100_000) -> None:
        self.max_messages = max_messages
        self._runs: dict[str, deque[StoredMessage]] = {}
        self._policy = WTinyLfu(max(max_messages, 1))
        self.hits = 0
        self.misses = 0

    @property
    def evictions(self) -> int:
        return self._policy.evictions

    @property
    def rejections(self) -> int:
        return self._policy.rejections

    def add(self, message: StoredMessage) -> None:
        if self.max_messages <= 0:
            return
        conversation_id = message.conversation_id
        self._policy.record(conversation_id)
        run = self._runs.get(conversation_id)
        if run is None:
            run = self._runs[conversation_id] = deque()
        if run and run[-1].seq + 1 != message.seq:
            run.clear()
        run.append(message)
        if len(run) > PER_CONVERSATION:
            run.popleft()
        for gone in self._policy.put(conversation_id, len(run)):
            self._runs.pop(gone, None)

    def after(self, conversation_id: str, after_seq: int, limit: int,
              before_seq: int | None = None) -> list[StoredMessage] | None:
        """The oldest `limit` messages with seq > after_seq (and < before_seq),
        or None when the cache does not hold that whole range."""
        if self.max_messages > 0:
            self._policy.record(conversation_id)
        run = self._runs.get(conversation_id)
        if not run or run[0].seq > after_seq + 1:
            self.misses += 1
            return None
        self.hits += 1
        start = after_seq + 1 - run[0].seq
        upper = before_seq if before_seq is not None else run[-1].seq + 1
        out: list[StoredMessage] = []
        for i in range(max(start, 0), len(run)):
            m = run[i]
            if m.seq >= upper or len(out) == limit:
                break
            out.append(m)
        return out

    def head(self, conversation_id: str) -> int:
        run = self._runs.get(conversation_id)
        return run[-1].seq if run else 0

    def forget(self, conversation_id: str) -> None:
        if self._runs.pop(conversation_id, None) is not None:
            self._policy.remove(conversation_id)

    def __len__(self) -> int:
        return self._policy.weight

    def families(self) -> Iterator[Metric]:
        """The hot tier's counters, for /metrics."""
        yield metrics.counter("chatplane_im_hot_hits_total", "history ranges served from memory",
                              self.hits)
        yield metrics.counter("chatplane_im_hot_misses_total", "history ranges read from storage",
                              self.misses)
        yield metrics.counter("chatplane_im_hot_evictions_total",
                              "conversations evicted from the hot tier", self.evictions)
        yield metrics.counter("chatplane_im_hot_rejections_total",
                              "newcomers refused by admission (colder than what they would evict)",
                              self.rejections)
        yield metrics.gauge("chatplane_im_hot_messages", "messages held in the hot tier", len(self))
