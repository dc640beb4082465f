"""Downlink acknowledgement and retransmission, per connected device.

The device acks cumulatively ("I hold every inbox entry up to N"). The window
keeps what was pushed above the ack; when the oldest unacked push is older
than the retransmission timeout, everything unacked is pushed again (go-back-N;
the client drops what it already has) and the timeout doubles up to a cap.
A device that falls `capacity` entries behind gets no more pushes: it is told
to sync instead (it pulls from storage at its own pace), and pushes resume once
its acks catch up. A device that never acks is given up after `max_attempts`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class Verdict(Enum):
    OK = "ok"
    SYNC_HINT = "sync_hint"  # tell the device to pull: it is too far behind
    GIVE_UP = "give_up"  # it does not ack: close it, it will resume with sync


@dataclass(slots=True)
class _Pending(Generic[T]):
    item: T
    pushed_at_ms: float


class DownlinkWindow(Generic[T]):
    def __init__(
        self,
        acked: int,
        head: int,
        *,
        capacity: int = 512,
        rto_ms: float = 1000.0,
        max_rto_ms: float = 8000.0,
        max_attempts: int = 8,
    ) -> None:
        # `acked`: what the device said it holds at login; `head`: the inbox
        # head then. Entries up to `head` reach it by its own sync, not by push.
        self.acked = acked
        self.pushed_head = max(acked, head)
        self.capacity = capacity
        self.base_rto_ms = rto_ms
        self.max_rto_ms = max_rto_ms
        self.max_attempts = max_attempts
        self.rto_ms = rto_ms
        self.attempts = 0
        self.overflowed = False
        self.retransmitted = 0
        self._pending: OrderedDict[int, _Pending[T]] = OrderedDict()

    @property
    def unacked(self) -> int:
        return len(self._pending)

    def offer(self, seq: int, item: T, now_ms: float) -> tuple[bool, Verdict]:
        """A new inbox entry for this device: (push it now?, what else to do)."""
        if seq <= self.pushed_head:
            return False, Verdict.OK  # already pushed, or the device syncs it
        self.pushed_head = seq
        if self.overflowed:
            return False, Verdict.OK
        if len(self._pending) >= self.capacity:
            self.overflowed = True
            return False, Verdict.SYNC_HINT
        if not self._pending:
            self.rto_ms = self.base_rto_ms
            self.attempts = 0
        self._pending[seq] = _Pending(item, now_ms)
        return True, Verdict.OK

    def ack(self, seq: int) -> None:
        # Past the last entry offered here is taken as that entry: a device
        # that acks what does not exist (yet) would otherwise make its later,
        # true acks look old, and its window would never clear (it would be
        # closed as a slow consumer). A device that synced ahead of its pushes
        # gets those again and drops them as duplicates.
        seq = min(seq, self.pushed_head)
        if seq <= self.acked:
            return
        self.acked = seq
        while self._pending:
            first = next(iter(self._pending))
            if first > seq:
                break
            del self._pending[first]
        self.attempts = 0
        self.rto_ms = self.base_rto_ms
        if self.overflowed and seq >= self.pushed_head:
            self.overflowed = False  # caught up by syncing: push again

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return next(iter(self._pending.values())).pushed_at_ms + self.rto_ms

    def due(self, now_ms: float) -> tuple[list[T], Verdict]:
        """What to push again now (oldest first), if the timeout passed."""
        deadline = self.next_deadline()
        if deadline is None or now_ms < deadline:
            return [], Verdict.OK
        self.attempts += 1
        if self.attempts > self.max_attempts:
            return [], Verdict.GIVE_UP
        self.rto_ms = min(self.rto_ms * 2, self.max_rto_ms)
        items = []
        for pending in self._pending.values():
            pending.pushed_at_ms = now_ms
            items.append(pending.item)
        self.retransmitted += len(items)
        return items, Verdict.OK
