"""Heads, seals and bucketed reads for the ScyllaDB backend.

`Heads` knows where each conversation timeline and each user inbox ends: for
readers it probes the head (a hint row, then the top of the bucket it names
and the buckets after it); for a new holder of a sequence (scylla_seq.py) it
finds the head from the data alone and seals what lies above it. It also
pages through buckets for history and inbox reads, and finds a message's send
log entry and inbox entries. scylla_append.py writes; scylla.py holds the
`Storage` methods built on both.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chatplane.storage import cql
from chatplane.storage.base import SendRequest, StoredMessage
from chatplane.storage.scylla_statements import Statements, message_from_row

STATE_CACHE = 100_000
# Range tombstones per request of a seal: a block spans many small buckets
# (a block of 1,000 over buckets of 4 is 250 partitions), and one batch over
# hundreds of partitions times out on a busy node, failing the take.
SEAL_PARTITIONS = 16
RESUME_SCAN_SKEW_MS = 60_000  # clock skew tolerated when finding a half-done fan-out


@dataclass
class HeadState:
    """What this process knows of one timeline or inbox: None = ask storage."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    head: int | None = None


class _States(OrderedDict[str, HeadState]):
    def get_state(self, key: str) -> HeadState:
        state = self.get(key)
        if state is None:
            state = self[key] = HeadState()
            while len(self) > STATE_CACHE:
                oldest, old = next(iter(self.items()))
                if old.lock.locked():
                    break
                del self[oldest]
        else:
            self.move_to_end(key)
        return state


class Heads:
    """Timeline and inbox heads of one keyspace, as this process sees them."""

    def __init__(self, db: cql.CqlSession, st: Statements, message_bucket: int,
                 inbox_bucket: int, cid_bucket: int) -> None:
        self.db, self.st = db, st
        self.message_bucket, self.inbox_bucket, self.cid_bucket = (
            message_bucket, inbox_bucket, cid_bucket)
        self._conversations = _States()
        self._inboxes = _States()

    def conversation_state(self, conversation_id: str) -> HeadState:
        return self._conversations.get_state(conversation_id)

    def message_bucket_of(self, seq: int) -> int:
        return (max(seq, 1) - 1) // self.message_bucket

    def inbox_bucket_of(self, inbox_seq: int) -> int:
        return (max(inbox_seq, 1) - 1) // self.inbox_bucket

    # -- heads ---------------------------------------------------------------

    async def _probe(self, top: Any, key: str, hint: int, size: int, serial: bool) -> int:
        """The highest seq at or after `hint` (a lower bound): the top of the
        hinted bucket, then of each following bucket while the last was full."""
        bucket = (max(hint, 1) - 1) // size
        best = max(hint, 0)
        while True:
            rows = await self.db.run(top, (key, bucket), serial_read=serial)
            top_seq = next(iter(rows[0].values())) if rows else None
            if top_seq is None:  # empty, or only the fence (a static cell) is there
                return best
            seq = max(best, int(top_seq))
            best = seq
            if seq < (bucket + 1) * size:
                return best
            bucket += 1

    async def conversation_head(self, conversation_id: str, *, serial: bool) -> int:
        rows = await self.db.run(self.st.conversation_hint, (conversation_id,))
        hint = int(rows[0]["head_seq"] or 0) if rows else 0
        return await self._probe(self.st.top_seq, conversation_id, hint,
                                 self.message_bucket, serial)

    async def inbox_head(self, user_id: str, *, serial: bool) -> int:
        rows = await self.db.run(self.st.inbox_hint, (user_id,))
        hint = int(rows[0]["head"] or 0) if rows else 0
        return await self._probe(self.st.top_inbox, user_id, hint, self.inbox_bucket, serial)

    async def data_head(self, top: Any, key: str, hint_statement: Any, size: int) -> int:
        """The highest number actually stored (the hint only says where to
        start looking: a stale holder may have moved it past sealed rows).
        Walks down from the hinted bucket to the first non-empty one, then up
        while buckets are full."""
        rows = await self.db.run(hint_statement, (key,))
        hint = int(next(iter(rows[0].values())) or 0) if rows else 0
        bucket = (max(hint, 1) - 1) // size
        found = None
        while bucket >= 0 and found is None:
            found = await self._top(top, key, bucket)
            if found is None:
                bucket -= 1
        if found is None:
            return 0
        while found >= (bucket + 1) * size:
            bucket += 1
            above = await self._top(top, key, bucket)
            if above is None:
                break
            found = above
        return found

    async def _top(self, top: Any, key: str, bucket: int) -> int | None:
        rows = await self.db.run(top, (key, bucket))
        value = next(iter(rows[0].values())) if rows else None
        return None if value is None else int(value)  # None: empty, or only a static cell

    async def seal_timeline(self, conversation_id: str, top: int, reserved: int,
                            ts: int) -> None:
        """Hide whatever an earlier holder wrote (or still will) above `top`, up
        to its reservation: a range tombstone at `ts`, above its timestamps."""
        items: list[tuple[Any, tuple[Any, ...]]] = [
            (self.st.seal_messages, (ts, conversation_id, bucket, top, reserved))
            for bucket in range(self.message_bucket_of(top + 1),
                                     self.message_bucket_of(reserved) + 1)]
        items.append((self.st.set_conversation_head, (ts + 1, top, conversation_id)))
        await self._seal(items)

    async def seal_inbox(self, user_id: str, top: int, reserved: int, ts: int) -> None:
        items: list[tuple[Any, tuple[Any, ...]]] = [
            (self.st.seal_inbox, (ts, user_id, bucket, top, reserved))
            for bucket in range(self.inbox_bucket_of(top + 1),
                                     self.inbox_bucket_of(reserved) + 1)]
        items.append((self.st.set_inbox_hint, (ts + 1, top, user_id)))
        await self._seal(items)

    async def _seal(self, items: list[tuple[Any, tuple[Any, ...]]]) -> None:
        """A seal's tombstones (at one fixed timestamp: a resent or repeated
        chunk writes the same tombstone) in requests of SEAL_PARTITIONS,
        concurrently; the take waits for all of them."""
        await cql.gather_bounded(self.db.run_batch(items[i:i + SEAL_PARTITIONS])
                                 for i in range(0, len(items), SEAL_PARTITIONS))

    def inbox_lock(self, user_id: str) -> asyncio.Lock:
        return self._inboxes.get_state(user_id).lock

    # -- messages ------------------------------------------------------------

    async def read_message_rows(self, conversation_id: str, seq: int, *,
                                serial: bool) -> list[dict[str, Any]]:
        return await self.db.run(self.st.select_message,
                                 (conversation_id, self.message_bucket_of(seq), seq),
                                 serial_read=serial)

    async def find_send(self, request: SendRequest) -> StoredMessage | None:
        """The message an earlier send with the same (sender, device, cid) made."""
        row = await self.find_send_row(request)
        return None if row is None else message_from_row(row)

    async def find_send_row(self, request: SendRequest) -> dict[str, Any] | None:
        """The timeline row of that message (with `fanned_out`), read in this
        datacenter."""
        rows = await self.db.run(self.st.select_send, (
            request.conversation_id, request.sender, request.sender_device,
            request.cid // self.cid_bucket, request.cid))
        if not rows:
            return None
        seq = int(rows[0]["seq"])
        found = await self.read_message_rows(request.conversation_id, seq, serial=False)
        # A send log row whose message is not there (sealed: a stale holder
        # wrote both) or is another's (the seq went to someone else) is no
        # original: quorum reads see every message written before them.
        if not found or (found[0]["sender"], found[0]["sender_device"], found[0]["cid"]) != (
                request.sender, request.sender_device, request.cid):
            return None
        return found[0]

    async def find_entry(self, user: str, message: StoredMessage, appended_at: int,
                          head: int) -> int | None:
        """An entry for `message` near the inbox's head, written by an attempt
        that was cut short; entries older than the append stop the search."""
        bucket, top = self.inbox_bucket_of(head), head
        while bucket >= 0 and top >= 1:
            rows = await self.db.run(self.st.inbox_desc, (user, bucket, top, self.inbox_bucket))
            for row in rows:
                if (row["conversation_id"], row["seq"]) == (message.conversation_id,
                                                            message.seq):
                    return int(row["inbox_seq"])
                if int(row["added_at_ms"] or 0) < appended_at - RESUME_SCAN_SKEW_MS:
                    return None
            bucket, top = bucket - 1, bucket * self.inbox_bucket
        return None

    async def inbox_refs(self, user_id: str, after: int, limit: int) -> list[tuple[int, str, int]]:
        out: list[tuple[int, str, int]] = []
        bucket = self.inbox_bucket_of(after + 1)
        while len(out) < limit:
            want = limit - len(out)
            rows = await self.db.run(self.st.inbox_after, (user_id, bucket, after, want))
            out.extend((int(r["inbox_seq"]), r["conversation_id"], int(r["seq"])) for r in rows)
            end = (bucket + 1) * self.inbox_bucket
            if not rows or (len(rows) < want and out[-1][0] < end):
                break
            after, bucket = out[-1][0], bucket + 1
        return out

    async def messages_by_ref(self, refs: Sequence[tuple[str, int]]
                              ) -> dict[tuple[str, int], StoredMessage]:
        groups: dict[tuple[str, int], list[int]] = {}
        for conversation_id, seq in refs:
            groups.setdefault((conversation_id, self.message_bucket_of(seq)), []).append(seq)
        results = await cql.gather_bounded(
            self.db.run(self.st.messages_in, (conversation_id, bucket, sorted(set(seqs))))
            for (conversation_id, bucket), seqs in groups.items())
        return {(row["conversation_id"], int(row["seq"])): message_from_row(row)
                for rows in results for row in rows}

    # -- timelines -----------------------------------------------------------

    async def timeline_up(self, conversation_id: str, low: int, top: int | None,
                          limit: int) -> list[StoredMessage]:
        """The oldest `limit` messages with low <= seq (<= top)."""
        out: list[StoredMessage] = []
        bucket = self.message_bucket_of(low)
        while len(out) < limit:
            end = (bucket + 1) * self.message_bucket
            high = end if top is None else min(end, top)
            if high < low:
                break
            want = limit - len(out)
            rows = await self.db.run(self.st.timeline_range,
                                     (conversation_id, bucket, low, high, want))
            out.extend(message_from_row(row) for row in rows)
            if len(rows) < min(want, high - low + 1) or high != end:
                break
            low, bucket = end + 1, bucket + 1
        return out

    async def timeline_rows_down(self, conversation_id: str, top: int,
                                 limit: int) -> list[dict[str, Any]]:
        """The newest `limit` rows with seq <= top, ascending."""
        out: list[dict[str, Any]] = []
        bucket = self.message_bucket_of(top)
        while len(out) < limit and bucket >= 0 and top >= 1:
            rows = await self.db.run(self.st.timeline_desc,
                                     (conversation_id, bucket, top, limit - len(out)))
            out.extend(rows)
            bucket, top = bucket - 1, bucket * self.message_bucket
        out.reverse()
        return out

    async def timeline_down(self, conversation_id: str, top: int,
                            limit: int) -> list[StoredMessage]:
        return [message_from_row(row)
                for row in await self.timeline_rows_down(conversation_id, top, limit)]
