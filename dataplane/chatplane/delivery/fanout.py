"""Large-group push pacing (read diffusion), per group: pure rules.

A quiet group pushes each message to its online members as it comes. When
messages come faster than one per `interval_ms`, they are held and pushed as
one batch per interval (one frame per member instead of many), and a batch
that grows past `max_messages` is cut down to a head notice ("messages up to
N exist: pull them"). Whatever happens, the last flush carries the group's
head, so a member always learns there is something to fetch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Flush(Generic[T]):
    messages: list[T]
    head_seq: int


@dataclass(slots=True)
class GroupBatcher(Generic[T]):
    interval_ms: float = 100.0
    max_messages: int = 200
    last_flush_ms: float = -1e18
    head_seq: int = 0
    overflowed: bool = False
    pending: list[T] = field(default_factory=list)

    def offer(self, seq: int, message: T, now_ms: float, busy: bool = False) -> Flush[T] | None:
        """A new message: a flush to push now, or None (then call `due` at
        `deadline()`). While the previous flush is still being pushed
        (`busy`) it is held: what comes meanwhile goes out as one batch
        after it, not as frames queued behind it."""
        self.head_seq = max(self.head_seq, seq)
        if (not busy and not self.pending and not self.overflowed
                and now_ms - self.last_flush_ms >= self.interval_ms):
            self.last_flush_ms = now_ms
            return Flush([message], self.head_seq)
        if len(self.pending) < self.max_messages:
            self.pending.append(message)
        else:
            self.overflowed = True
        return None

    def deadline(self) -> float | None:
        if not self.pending and not self.overflowed:
            return None
        return self.last_flush_ms + self.interval_ms

    def due(self, now_ms: float) -> Flush[T] | None:
        deadline = self.deadline()
        if deadline is None or now_ms < deadline:
            return None
        messages = [] if self.overflowed else self.pending
        self.pending = []
        self.overflowed = False
        self.last_flush_ms = now_ms
        return Flush(messages, self.head_seq)
