"""Client-side inbox cursor: exactly once and in order from pushes and syncs.

Entries arrive by push (live, possibly duplicated or early after a loss) and by
sync (pulled pages). The cursor drops anything at or below what it holds,
buffers what is early, and releases entries only in contiguous inbox_seq
order. When something early waits on a missing entry, the owner pulls the gap
with a SyncRequest from `have`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class InboxCursor(Generic[T]):
    def __init__(self, have: int = 0, max_buffered: int = 10_000) -> None:
        self.have = have
        self.max_buffered = max_buffered
        self._early: dict[int, T] = {}
        self.duplicates = 0

    @property
    def gap(self) -> bool:
        """Entries wait on a missing one: pull from `have`."""
        return bool(self._early)

    def accept(self, seq: int, item: T) -> list[T]:
        """Take one entry; return what became deliverable, in order."""
        if seq <= self.have or seq in self._early:
            self.duplicates += 1
            return []
        if seq != self.have + 1:
            if len(self._early) < self.max_buffered:
                self._early[seq] = item
            return []  # over the buffer: dropped here, sync brings it again
        ready = [item]
        self.have = seq
        while self._early:
            nxt = self._early.pop(self.have + 1, None)
            if nxt is None:
                break
            ready.append(nxt)
            self.have += 1
        # anything left at or below `have` cannot exist; entries above wait
        return ready
