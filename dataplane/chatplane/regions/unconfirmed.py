"""What this region sequenced as home and no peer confirmed yet: reads stop below it.

In `sync` durability a home pushes what it sequenced only once a peer applied it
(`Homes.deliver_when_confirmed`), because a region that takes the home over gives an
unconfirmed message's seq (and its inbox entries' inbox_seqs) to other messages
(docs/architecture.md, "Failover"). Reads are served from the store, which holds the
unconfirmed rows too, so they ask here how far they may go: per conversation the highest
seq readable, per user the highest inbox_seq readable. The index is in memory, fed by
the appends (`appended`: the log position is known then, `AppendResult.log_position`)
and pruned against the peers' confirmations (`Durability.confirmed_to`) whenever it is
asked, so a read caps its range without a storage query.

After a restart the index is rebuilt from the log before the first read is answered
(`ready`): every entry the log retains past its trimmed position is taken as
unconfirmed (the log is trimmed only below what every peer applied, so it holds all that
may be unconfirmed), until a peer confirms it, which a peer's Replicate stream does as it
opens. Nothing of this runs in `async` or without peers (`Durability.waits` false).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from collections.abc import Sequence

from chatplane.regions.durability import Durability
from chatplane.regions.homes import homed
from chatplane.storage.base import (
    AppendResult,
    InboxItem,
    LogTrimmed,
    ReplicatedLog,
    StorageUnavailable,
)

log = logging.getLogger(__name__)

CONVERSATION, INBOX = "c", "u"
SEED_PAGE = 10_000  # log positions read per query when rebuilding after a start


class Unconfirmed:
    """Per conversation and per user, the (log position, seq) of what this region
    sequenced as home past every peer's confirmation, oldest first."""

    def __init__(self, region: str, durability: Durability, log: ReplicatedLog) -> None:
        self.region = region
        self.durability = durability
        self.log = log
        # (kind, key) -> deque of (log position, seq or inbox_seq), ascending
        self._pending: dict[tuple[str, str], deque[tuple[int, int]]] = {}
        self._by_position: list[tuple[int, str, str]] = []  # heap: what to prune first
        self._seeded: asyncio.Task[None] | None = None
        self._ready = False  # rebuilt from the log: reads no longer wait
        # appends in flight (tickets): a read waits for those begun before its query
        # returned, since the query may hold their rows before `appended` indexed them
        self._issued = 0
        self._open: set[int] = set()
        self._ended = asyncio.Event()

    @property
    def active(self) -> bool:
        """Reads are capped only in `sync` with peers: nothing to do otherwise."""
        return self.durability.waits

    def begin(self) -> int:
        """An append as home starts: its ticket for `end` (0: nothing to track)."""
        if not self.active:
            return 0
        self._issued += 1
        self._open.add(self._issued)
        return self._issued

    def end(self, ticket: int) -> None:
        """The append of `ticket` is indexed (`appended`) or failed."""
        if ticket:
            self._open.discard(ticket)
            event, self._ended = self._ended, asyncio.Event()
            event.set()

    async def settled(self) -> None:
        """Return once every append begun before now is indexed or failed: called
        after a read's storage query, before its caps are asked."""
        upto = self._issued
        while self._open and min(self._open) <= upto:
            await self._ended.wait()

    def appended(self, result: AppendResult) -> None:
        """A message sequenced here as home (not a duplicate), and the inbox entries its
        transaction wrote, at `result.log_position`."""
        position = result.log_position
        message = result.message
        if (not self.active or result.duplicate or position <= 0
                or not homed(message.conversation_id)):
            return
        self._add(CONVERSATION, message.conversation_id, position, message.seq)
        for item in result.inbox:
            self._add(INBOX, item.user_id, position, item.inbox_seq)

    def _add(self, kind: str, key: str, position: int, number: int) -> None:
        entries = self._pending.setdefault((kind, key), deque())
        if entries and entries[-1][1] >= number:  # seeded after this append: keep order
            merged = sorted({*entries, (position, number)}, key=lambda e: e[1])
            entries.clear()
            entries.extend(merged)
        else:
            entries.append((position, number))
        heapq.heappush(self._by_position, (position, kind, key))

    def _prune(self) -> None:
        if not self._by_position:
            return
        if self.durability.alone:  # acked alone: the witness lets no region take us over
            self._pending.clear()
            self._by_position.clear()
            return
        confirmed = self.durability.confirmed_to
        heap = self._by_position
        while heap and heap[0][0] <= confirmed:
            _, kind, key = heapq.heappop(heap)
            entries = self._pending.get((kind, key))
            while entries and entries[0][0] <= confirmed:
                entries.popleft()
            if entries is not None and not entries:
                del self._pending[(kind, key)]

    async def ready(self) -> None:
        """The index holds what the log retained at this process's start (once)."""
        if not self.active or self._ready:
            return
        if self._seeded is None:
            self._seeded = asyncio.ensure_future(self._seed())
        await asyncio.shield(self._seeded)

    async def _seed(self) -> None:
        try:
            after = (await self.log.log_extent()).trimmed_to
            head = await self.log.log_head()
            seeded = 0
            while after < head:
                try:
                    entries, scanned, _ = await self.log.log_after(after, SEED_PAGE,
                                                                   self.region)
                except LogTrimmed as trimmed:  # trimmed meanwhile: confirmed by every peer
                    after = trimmed.trimmed_to
                    continue
                if scanned <= after:  # nothing past it after all
                    break
                after = scanned
                for entry in entries:
                    if entry.lsn > head:
                        break
                    if entry.inbox_user:
                        self._add(INBOX, entry.inbox_user, entry.lsn, entry.inbox_seq)
                    else:
                        self._add(CONVERSATION, entry.message.conversation_id, entry.lsn,
                                  entry.message.seq)
                    seeded += 1
            self._ready = True
            log.info("reads wait for a peer's confirmation of %d logged entries (to position"
                     " %d) read at start", seeded, head)
        except StorageUnavailable:
            self._seeded = None  # the next read tries again
            raise

    def _cap(self, kind: str, key: str) -> int | None:
        self._prune()
        entries = self._pending.get((kind, key))
        return entries[0][1] - 1 if entries else None

    def seq_cap(self, conversation_id: str) -> int | None:
        """The highest seq of the conversation a read may serve (None: no limit)."""
        return self._cap(CONVERSATION, conversation_id) if self.active else None

    def inbox_cap(self, user_id: str) -> int | None:
        """The highest inbox_seq of the user a read may serve (None: no limit)."""
        return self._cap(INBOX, user_id) if self.active else None

    def inbox_page(self, user_id: str, after: int, items: Sequence[InboxItem],
                   head: int) -> tuple[list[InboxItem], int]:
        """A sync page (`items` after inbox_seq `after`, the inbox's `head`) cut before
        its first entry past the user's cap or naming a message past its conversation's:
        a prefix, so the device's cursor never skips an entry it will be served later."""
        cap = self.inbox_cap(user_id)
        kept: list[InboxItem] = []
        for item in items:
            message = item.message
            seq_cap = self.seq_cap(message.conversation_id)
            if ((cap is not None and item.inbox_seq > cap)
                    or (seq_cap is not None and message.seq > seq_cap)):
                return kept, kept[-1].inbox_seq if kept else after
            kept.append(item)
        return kept, head if cap is None else min(head, cap)

    def view(self) -> dict[str, int]:
        """For /v1/peers: how much reads are held back."""
        self._prune()
        return {"conversations": sum(1 for k, _ in self._pending if k == CONVERSATION),
                "inboxes": sum(1 for k, _ in self._pending if k == INBOX)}
