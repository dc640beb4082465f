"""The cold tier around any Storage: archived bodies read back, and the archiver.

`ArchivedStorage` wraps a backend and is itself a Storage: every read that
returns messages (history, inbox, conversation list) goes through the
backend, and the rows the archiver stubbed (storage/archive_rows.py) get
their bodies back from the conversation's segments (storage/archive_segments.py).
Seqs, order and paging are the backend's own, so a page that spans the
boundary between archived and hot messages is the same page as before
archiving, and a half-archived conversation syncs exactly once and in order.
A stub whose range has expired (retention) reads as a tombstone of content
type `chatplane/expired`: the seq stays, the content is gone.

`Archiver.run_once` compacts: per conversation, the messages older than
`archive_after_days` (never the newest, which conversation lists show) go
into segments of at most `archive_segment_messages`; the segment is written
(and fsynced) before its rows are stubbed, so a crash in between leaves the
full rows, which the next run stubs again. Then retention replaces segments
whose newest message is older than the kind's `retention_days_*` by an
expired marker. `supervise` runs it every `archive_interval_s` as a
supervised task; `chatplane storage archive` runs it once.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.settings import Archive as ArchiveSettings
from chatplane.storage import archive_segments as segments
from chatplane.storage.archive_rows import ArchiveRows, is_stub
from chatplane.storage.base import (
    DIRECT,
    GROUP,
    ConversationSummary,
    InboxItem,
    Storage,
    StorageUnavailable,
    StoredMessage,
)

log = logging.getLogger(__name__)

EXPIRED_TYPE = "chatplane/expired"
DAY_MS = 86_400_000
CACHED_SEGMENTS = 64  # decoded segments kept: a page usually needs one or two


class ArchivedStorage:
    """A Storage whose old message bodies live in segments."""

    def __init__(self, inner: Storage, store: segments.SegmentStore,
                 archiver: Archiver | None = None, interval_s: float = 3600.0) -> None:
        self.inner = inner
        self.store = store
        self.archiver = archiver  # run in the background by supervise()
        self.interval_s = interval_s
        self._entries: dict[str, list[segments.Entry]] = {}
        self._decoded: OrderedDict[str, dict[int, StoredMessage]] = OrderedDict()
        self.archive_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def history(self, conversation_id: str, *, before_seq: int | None = None,
                      after_seq: int | None = None, limit: int = 50) -> list[StoredMessage]:
        return await self.fill(await self.inner.history(
            conversation_id, before_seq=before_seq, after_seq=after_seq, limit=limit))

    async def inbox(self, user_id: str, after_seq: int, limit: int) -> list[InboxItem]:
        items = await self.inner.inbox(user_id, after_seq, limit)
        if not any(is_stub(i.message) for i in items):
            return items
        filled = await self.fill([i.message for i in items])
        return [dataclasses.replace(i, message=m) for i, m in zip(items, filled, strict=True)]

    async def conversations_of(self, user_id: str, limit: int,
                               before: tuple[int, str] | None = None) -> list[ConversationSummary]:
        summaries = await self.inner.conversations_of(user_id, limit, before)
        out = []
        for s in summaries:
            if s.last_message is not None and is_stub(s.last_message):
                s = dataclasses.replace(s, last_message=(await self.fill([s.last_message]))[0])
            out.append(s)
        return out

    async def fill(self, messages: Sequence[StoredMessage]) -> list[StoredMessage]:
        """The messages with stubs replaced by their archived bodies, in order."""
        out = list(messages)
        for i, m in enumerate(out):
            if is_stub(m):
                out[i] = await self._body(m)
        return out

    async def _body(self, stub: StoredMessage) -> StoredMessage:
        for fresh in (False, True):  # a second look after an archiver changed the listing
            entry = await self._covering(stub.conversation_id, stub.seq, fresh)
            if entry is None:
                continue
            if entry.expired:
                return dataclasses.replace(stub, content_type=EXPIRED_TYPE)
            decoded = await self._segment(stub.conversation_id, entry.name)
            found = decoded.get(stub.seq) if decoded is not None else None
            if found is not None and found.message_id == stub.message_id:
                return found
        if await self._covering(stub.conversation_id, stub.seq, False) is None:
            return stub  # not archived by us: a message that merely looks like a stub
        raise StorageUnavailable(f"{stub.conversation_id}#{stub.seq} is archived but its "
                                 "segment cannot be read")

    async def _covering(self, conversation_id: str, seq: int,
                        fresh: bool) -> segments.Entry | None:
        listing = None if fresh else self._entries.get(conversation_id)
        if listing is None or not any(e.first <= seq <= e.last for e in listing):
            listing = await segments.entries(self.store, conversation_id)
            self._entries[conversation_id] = listing
        # expired markers win over a segment of the same range (retention ran)
        at = bisect.bisect_right([e.first for e in listing], seq)
        covering = [e for e in listing[:at] if e.last >= seq]
        covering.sort(key=lambda e: not e.expired)
        return covering[0] if covering else None

    async def _segment(self, conversation_id: str, name: str) -> dict[int, StoredMessage] | None:
        decoded = self._decoded.get(name)
        if decoded is None:
            data = await self.store.get(name)
            if data is None:
                return None
            self.archive_reads += 1
            decoded = {m.seq: m for m in segments.decode(conversation_id, data)}
            self._decoded[name] = decoded
            while len(self._decoded) > CACHED_SEGMENTS:
                self._decoded.popitem(last=False)
        self._decoded.move_to_end(name)
        return decoded

    async def open(self) -> None:
        await self.inner.open()
        try:
            await self.store.check()  # a missing bucket fails the start, not the first read
        except BaseException:
            await self.store.close()
            raise

    async def close(self) -> None:
        if self.archiver is not None:
            await self.archiver.rows.close()
        await self.store.close()
        await self.inner.close()

    def families(self) -> Iterator[Metric]:
        yield from self.inner.families()
        yield metrics.counter("chatplane_archive_segment_reads_total",
                              "archive segments read and decompressed", self.archive_reads)


@dataclasses.dataclass
class Report:
    conversations: int = 0
    messages: int = 0
    segments: int = 0
    expired: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0


class Archiver:
    """One pass of compaction and retention over every conversation."""

    def __init__(self, storage: Storage, rows: ArchiveRows, store: segments.SegmentStore,
                 config: ArchiveSettings) -> None:
        self.storage = storage
        self.rows = rows
        self.store = store
        self.config = config

    def retention_ms(self, kind: str) -> int:
        days = {DIRECT: self.config.retention_days_direct,
                GROUP: self.config.retention_days_group}.get(kind,
                                                             self.config.retention_days_events)
        return int(days * DAY_MS)

    async def run_once(self, now_ms: int | None = None) -> Report:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        report = Report()
        cutoff = now_ms - int(self.config.archive_after_days * DAY_MS)
        for conversation_id, kind in await self.rows.conversations():
            report.conversations += 1
            listing = await segments.entries(self.store, conversation_id)
            if self.config.archive_after_days > 0:
                await self._compact(conversation_id, listing, cutoff, report)
            keep_ms = self.retention_ms(kind)
            if keep_ms:
                await self._expire(conversation_id, now_ms - keep_ms, report)
        return report

    async def _compact(self, conversation_id: str, listing: list[segments.Entry],
                       cutoff: int, report: Report) -> None:
        through = max((e.last for e in listing), default=0)
        last = max((e for e in listing if not e.expired), default=None, key=lambda e: e.last)
        if last is not None:  # stubbing may not have finished (a crash after the segment)
            rows = await self.storage.history(conversation_id, after_seq=last.first - 1,
                                              limit=last.last - last.first + 1)
            await self.rows.stub([m for m in rows if m.seq <= last.last and not is_stub(m)])
        size = self.config.archive_segment_messages
        while True:
            page = await self.storage.history(conversation_id, after_seq=through, limit=size + 1)
            # the newest message stays hot; and only a run of old messages goes
            candidates = page[:size] if len(page) > size else page[:-1]
            batch: list[StoredMessage] = []
            for m in candidates:
                if m.sent_at_ms >= cutoff or is_stub(m):
                    break
                batch.append(m)
            if not batch:
                return
            data = segments.encode(batch)
            name = segments.segment_name(conversation_id, batch[0].seq, batch[-1].seq,
                                         max(m.sent_at_ms for m in batch))
            await self.store.put(name, data)
            await self.rows.stub(batch)
            report.messages += len(batch)
            report.segments += 1
            report.raw_bytes += len(segments.records(batch))  # what zstd was given
            report.stored_bytes += len(data)
            through = batch[-1].seq

    async def _expire(self, conversation_id: str, before_ms: int, report: Report) -> None:
        for entry in await segments.entries(self.store, conversation_id):
            if entry.expired or entry.newest_ms >= before_ms:
                continue
            # the marker first: a crash between the two leaves both, and reads
            # honour the marker
            await self.store.put(segments.expired_name(conversation_id, entry.first, entry.last),
                                 b"")
            await self.store.delete(entry.name)
            report.expired += entry.last - entry.first + 1


async def run_forever(archiver: Archiver, interval_s: float) -> None:
    """The background task: one pass per interval, the first one interval after
    start (a restart does not add a pass); a failure is the supervisor's."""
    while True:
        await asyncio.sleep(interval_s)
        report = await archiver.run_once()
        if report.messages or report.expired:
            log.info("archive: %d messages into %d segments (%d -> %d bytes), %d expired",
                     report.messages, report.segments, report.raw_bytes, report.stored_bytes,
                     report.expired)
