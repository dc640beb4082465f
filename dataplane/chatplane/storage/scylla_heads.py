"""Heads, claims and bucketed reads for the ScyllaDB backend.

`Heads` knows where each conversation timeline and each user inbox ends, and
how to extend them: it probes the head from the data (a hint row, then the
top of the bucket it names and the buckets after it), claims the next inbox
seq with a conditional insert, and finishes a message whose fan-out was cut
short. It also pages through buckets for history and inbox reads. scylla.py
holds the `Storage` methods built on it (and the seq claim).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chatplane.storage import cql
from chatplane.storage.base import InboxItem, SendRequest, StorageUnavailable, StoredMessage
from chatplane.storage.scylla_social import apply_change, decode_change
from chatplane.storage.scylla_statements import Statements, message_from_row

MAX_CLAIM_ATTEMPTS = 50
STATE_CACHE = 100_000
RESUME_SCAN_SKEW_MS = 60_000  # clock skew tolerated when finding a half-done fan-out
RECOVER_TAIL = 16  # messages checked for an unfinished fan-out when a head is loaded


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


def _now_ms() -> int:
    return int(time.time() * 1000)


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

    async def recover_conversation(self, conversation_id: str) -> int:
        """Load the head and finish any recent message left half done."""
        head = await self.conversation_head(conversation_id, serial=True)
        if head < 1:
            return 0
        for row in reversed(await self.timeline_rows_down(conversation_id, head, RECOVER_TAIL)):
            if not row["fanned_out"]:
                message = message_from_row(row)
                if row["membership"]:
                    await apply_change(self.db, self.st, conversation_id,
                                       decode_change(row["membership"]), message.seq,
                                       message.sent_at_ms)
                _, inbox = await asyncio.gather(
                    self.record_send(message),
                    self.fan_out(message, list(row["recipients"] or ()),
                                 int(row["appended_at_ms"] or 0), resume=True))
                await self.finish(message, inbox)
        return head

    # -- messages ------------------------------------------------------------

    async def read_message_rows(self, conversation_id: str, seq: int, *,
                                serial: bool) -> list[dict[str, Any]]:
        return await self.db.run(self.st.select_message,
                                 (conversation_id, self.message_bucket_of(seq), seq),
                                 serial_read=serial)

    async def find_send(self, request: SendRequest) -> StoredMessage | None:
        """The message an earlier send with the same (sender, device, cid) made."""
        rows = await self.db.run(self.st.select_send, (
            request.conversation_id, request.sender, request.sender_device,
            request.cid // self.cid_bucket, request.cid))
        if not rows:
            return None
        seq = int(rows[0]["seq"])
        found = await self.read_message_rows(request.conversation_id, seq, serial=False)
        if not found:
            raise StorageUnavailable(f"{request.conversation_id}#{seq} not readable now")
        return message_from_row(found[0])

    async def record_send(self, message: StoredMessage) -> None:
        await self.db.run(self.st.insert_send, (
            message.conversation_id, message.sender, message.sender_device,
            message.cid // self.cid_bucket, message.cid, message.seq))

    async def finish(self, message: StoredMessage, inbox: Sequence[InboxItem]) -> None:
        """Mark the message done (its send log entry and inbox entries are
        written); advance the head hints and the activity time, and the
        sender's read position (one's own message is read)."""
        seq, conversation_id = message.seq, message.conversation_id
        # An inbox hint only has to name the right bucket (the probe reads on
        # from there), so it is written when an entry opens a bucket.
        await asyncio.gather(
            cql.gather_bounded(
                self.db.run(self.st.set_inbox_hint, (item.inbox_seq, item.inbox_seq, item.user_id))
                for item in {item.user_id: item for item in inbox}.values()
                if (item.inbox_seq - 1) % self.inbox_bucket == 0),
            self.db.run(self.st.mark_fanned_out,
                        (conversation_id, self.message_bucket_of(seq), seq)),
            self.db.run(self.st.set_conversation_hint,
                        (seq, seq, message.sent_at_ms, conversation_id)),
            self.db.run(self.st.set_read, (seq, seq, conversation_id, message.sender)))

    # -- inboxes -------------------------------------------------------------

    async def fan_out(self, message: StoredMessage, recipients: Sequence[str],
                      appended_at: int, *, resume: bool) -> list[InboxItem]:
        """One inbox entry per distinct recipient (in the order given). With
        resume, an entry an interrupted attempt already made is reused."""
        users = list(dict.fromkeys(recipients))
        seqs = await cql.gather_bounded(
            self._claim_inbox(user, message, appended_at, resume) for user in users)
        by_user = dict(zip(users, seqs, strict=True))
        return [InboxItem(user, by_user[user], message) for user in recipients]

    async def _claim_inbox(self, user: str, message: StoredMessage, appended_at: int,
                           resume: bool) -> int:
        state = self._inboxes.get_state(user)
        async with state.lock:
            try:
                if state.head is None:
                    state.head = await self.inbox_head(user, serial=True)
                if resume:
                    found = await self._find_entry(user, message, appended_at, state.head)
                    if found is not None:
                        return found
                return await self._claim_next(user, message, state)
            except BaseException:
                state.head = None
                raise

    async def _claim_next(self, user: str, message: StoredMessage, state: HeadState) -> int:
        assert state.head is not None
        n = state.head + 1
        for _ in range(MAX_CLAIM_ATTEMPTS):
            params = (user, self.inbox_bucket_of(n), n, message.conversation_id, message.seq,
                      _now_ms())
            try:
                rows = await self.db.run(self.st.insert_inbox, params)
            except StorageUnavailable:
                rows = await self.db.run(self.st.select_inbox, params[:3], serial_read=True)
                if not rows:
                    continue
                rows = [{"[applied]": False, **rows[0]}]
            if rows and rows[0].get("[applied]"):
                state.head = n
                return n
            existing = rows[0] if rows else {}
            if (existing.get("conversation_id"), existing.get("seq")) == (
                    message.conversation_id, message.seq):
                state.head = n
                return n
            state.head = await self.inbox_head(user, serial=True)
            n = state.head + 1
        raise StorageUnavailable(f"could not claim an inbox entry for {user} after "
                                 f"{MAX_CLAIM_ATTEMPTS} attempts")

    async def _find_entry(self, user: str, message: StoredMessage, appended_at: int,
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
