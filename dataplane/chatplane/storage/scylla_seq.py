"""Seq blocks for the ScyllaDB backend: numbers from memory, consensus per block.

Every sequence (a conversation's seq, key "c:<conversation>"; a user's
inbox_seq, key "i:<user>") has one row in `sequencers`, changed only by
conditional writes:
- `epoch`: the conversation's sequencing lease (`Storage.acquire` raises it);
- `gen`: raised each time a process starts writing the sequence ("takes" it);
- `ts_base`: the write timestamp of that gen, above every earlier gen's;
- `reserved`: the highest number any holder may write.

A process holds a sequence (`Holder`) after one conditional write (the take),
then hands numbers out from memory and writes rows with plain writes at its
timestamp; only running past `reserved` costs another conditional write (a
block of `step` numbers). Taking a sequence from a holder that may still be
writing (paused, partitioned, or this process after an unknown outcome):
1. the take raises gen and ts_base; from then on the old holder can neither
   extend its block nor pass a check (`current`);
2. the taker reads the head from the data (a quorum read) and *seals* what
   lies between the head and the old reservation: a range tombstone at the
   new ts_base, so whatever the old holder writes there, before or after,
   stays invisible (its timestamps are lower); the taker writes above it.
docs/storage.md ("Seq blocks and the fence") argues the interleavings.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from chatplane.storage import cql
from chatplane.storage.base import Fenced, StorageUnavailable
from chatplane.storage.scylla_statements import Statements

MAX_ATTEMPTS = 50
HELD = 200_000  # holders remembered; a forgotten one is taken again when needed
# A block's write timestamp is refreshed when it is older than this, so rows
# stay near the wall clock (time-window compaction, docs/storage.md).
TS_REFRESH_US = 3_600 * 1_000_000
CHECK_KEYS = 100  # partition keys per IN read of a check

Head = Callable[[], Awaitable[int]]
Seal = Callable[[int, int, int], Awaitable[None]]  # (head, reserved, timestamp)


@dataclass
class Holder:
    """A sequence this process writes: numbers up to `reserved` are its own."""

    key: str
    epoch: int
    gen: int
    ts_base: int
    next: int  # the next number to hand out
    reserved: int

    @property
    def ts(self) -> int:
        """The write timestamp of this holder's rows (above its seal)."""
        return self.ts_base + 1


class Taken(StorageUnavailable):
    """An unfenced append found its conversation taken by another writer
    while it wrote: its rows may be sealed; take it back and look again."""


def _now_us() -> int:
    return int(time.time() * 1_000_000)


class Blocks:
    """The sequences this process holds, and how it takes and extends them."""

    def __init__(self, db: cql.CqlSession, st: Statements, owner: str, step: int) -> None:
        self.db, self.st, self.owner, self.step = db, st, owner, step
        self._held: OrderedDict[str, Holder] = OrderedDict()
        self.takes = 0
        self.extensions = 0
        # keys waiting for the next check, and the future that check resolves
        self._asked: set[str] = set()
        self._answer: asyncio.Future[dict[str, tuple[int, int]]] | None = None
        self._checking = False
        self._checker: asyncio.Future[None] | None = None

    def get(self, key: str) -> Holder | None:
        holder = self._held.get(key)
        if holder is not None:
            self._held.move_to_end(key)
        return holder

    def drop(self, key: str) -> None:
        """Forget a holder: the next use takes the sequence again (and seals
        whatever an unfinished write of this one may still leave)."""
        self._held.pop(key, None)

    async def _read(self, key: str) -> tuple[int | None, int | None, int | None, int | None]:
        rows = await self.db.run(self.st.select_sequence, (key,), serial_read=True)
        if not rows:
            return None, None, None, None
        row = rows[0]
        return row["epoch"], row["gen"], row["ts_base"], row["reserved"]

    async def take(self, key: str, head: Head, seal: Seal, *, raise_epoch: bool,
                   epoch: int | None, owner: str | None = None) -> Holder:
        """Hold `key` from now on. raise_epoch: a new lease (acquire); else keep
        the row's epoch, which must be `epoch` when given (Fenced otherwise).
        `owner` is recorded for operators (default: this store instance)."""
        self.drop(key)
        current = await self._read(key)
        for _ in range(MAX_ATTEMPTS):
            old_epoch, old_gen, old_ts, old_reserved = current
            if not raise_epoch and epoch is not None and old_epoch != epoch:
                raise Fenced(f"{key}: lease epoch {epoch} is stale (now {old_epoch})")
            new_epoch = (old_epoch or 0) + 1 if raise_epoch else (old_epoch or 0)
            new_gen = (old_gen or 0) + 1
            ts_base = max(_now_us(), (old_ts or 0) + 2)
            # The old reservation stays: numbers between the head and it are
            # sealed and reused above the seal; a fresh sequence gets a block.
            reserved = self.step if old_reserved is None else old_reserved
            try:
                rows = await self.db.run(self.st.take_sequence, (
                    new_epoch, new_gen, ts_base, reserved, owner or self.owner, key,
                    old_epoch, old_gen, old_reserved))
            except StorageUnavailable:
                # Outcome unknown: a SERIAL read settles it (ts_base is ours alone).
                current = await self._read(key)
                if current[1] == new_gen and current[2] == ts_base:
                    break
                continue
            row = rows[0] if rows else {}
            if row.get("[applied]"):
                break
            current = (row.get("epoch"), row.get("gen"), None, row.get("reserved"))
            if current[1] is not None:  # the reply omits ts_base: read it
                current = await self._read(key)
        else:
            raise StorageUnavailable(f"could not take {key} (others keep taking it)")
        self.takes += 1
        self.db.stats.took("inbox" if key.startswith("i:") else "conversation")
        top = await head()
        if old_reserved is not None and old_reserved > top:
            await seal(top, old_reserved, ts_base)
        holder = Holder(key, new_epoch, new_gen, ts_base, top + 1, reserved)
        self._held[key] = holder
        while len(self._held) > HELD:
            self._held.popitem(last=False)
        return holder

    async def allocate(self, holder: Holder, count: int = 1) -> int:
        """The first of `count` consecutive numbers (from memory, or after one
        conditional write that extends the block). Raises Taken when
        the holder was taken meanwhile (Taken; Fenced if the lease moved)."""
        first = holder.next
        if first + count - 1 > holder.reserved or _now_us() - holder.ts_base > TS_REFRESH_US:
            reserved = max(holder.reserved, first + count - 1) + self.step
            ts_base = max(_now_us(), holder.ts_base + 1)
            rows = await self.db.run(self.st.extend_sequence, (
                reserved, ts_base, holder.key, holder.epoch, holder.gen))
            row = rows[0] if rows else {}
            if not row.get("[applied]"):
                self.drop(holder.key)
                if row.get("epoch") is not None and row["epoch"] != holder.epoch:
                    raise Fenced(f"{holder.key}: lease epoch {holder.epoch} is stale "
                                 f"(now {row['epoch']})")
                raise Taken(f"{holder.key} was taken by another writer")
            holder.reserved, holder.ts_base = reserved, ts_base
            self.extensions += 1
        holder.next = first + count
        return first

    async def current(self, holders: Sequence[Holder]) -> list[Holder]:
        """The holders among `holders` that are no longer current (taken by
        someone else since). A write completed before this call is seen by any
        later taker's head read when this returns [] (docs/storage.md). Calls
        made while a check is in flight share the next one: one quorum read
        serves every append waiting at that moment."""
        loop = asyncio.get_running_loop()
        if self._answer is None:
            self._answer = loop.create_future()
        answer = self._answer
        self._asked.update(holder.key for holder in holders)
        if not self._checking:
            self._checking = True
            self._checker = asyncio.ensure_future(self._check_rounds())
        now = await asyncio.shield(answer)
        return [holder for holder in holders if now.get(holder.key) != (holder.epoch, holder.gen)]

    async def _check_rounds(self) -> None:
        try:
            while self._answer is not None:
                answer, keys = self._answer, sorted(self._asked)
                self._answer, self._asked = None, set()
                try:
                    rows = [row for part in await cql.gather_bounded(
                        self.db.run(self.st.sequences_in, (keys[i:i + CHECK_KEYS],))
                        for i in range(0, len(keys), CHECK_KEYS)) for row in part]
                except BaseException as exc:
                    answer.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                answer.set_result({row["key"]: (row["epoch"], row["gen"]) for row in rows})
        finally:
            self._checking = False
