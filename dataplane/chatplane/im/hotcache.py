"""Recent messages of busy conversations, in memory (the hot tier).

When 10,000 members of a group pull the same new messages, they read them
from here, not from storage 10,000 times. Per conversation the cache holds a
contiguous run of the latest messages (appends extend it; anything that does
not follow the cached tail restarts it); conversations are evicted least
recently used first, so the total stays under `max_messages`.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from chatplane.storage.base import StoredMessage

PER_CONVERSATION = 1000


class HotCache:
    def __init__(self, max_messages: int = 100_000) -> None:
        self.max_messages = max_messages
        self._runs: OrderedDict[str, deque[StoredMessage]] = OrderedDict()
        self._size = 0
        self.hits = 0
        self.misses = 0

    def add(self, message: StoredMessage) -> None:
        if self.max_messages <= 0:
            return
        run = self._runs.get(message.conversation_id)
        if run is None:
            run = self._runs[message.conversation_id] = deque()
        self._runs.move_to_end(message.conversation_id)
        if run and run[-1].seq + 1 != message.seq:
            self._size -= len(run)
            run.clear()
        run.append(message)
        self._size += 1
        if len(run) > PER_CONVERSATION:
            run.popleft()
            self._size -= 1
        while self._size > self.max_messages and self._runs:
            _, oldest = self._runs.popitem(last=False)
            self._size -= len(oldest)

    def after(self, conversation_id: str, after_seq: int, limit: int,
              before_seq: int | None = None) -> list[StoredMessage] | None:
        """The oldest `limit` messages with seq > after_seq (and < before_seq),
        or None when the cache does not hold that whole range."""
        run = self._runs.get(conversation_id)
        if not run or run[0].seq > after_seq + 1:
            self.misses += 1
            return None
        self.hits += 1
        self._runs.move_to_end(conversation_id)
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
        run = self._runs.pop(conversation_id, None)
        if run:
            self._size -= len(run)

    def __len__(self) -> int:
        return self._size
