"""Group commit for the ScyllaDB backend: the appends to one conversation that
arrive while its previous write is in flight are written together.

Appends to a conversation are serial (its seqs are contiguous and its rows
must land in order), so a busy conversation would otherwise be capped at one
append per write round trip. Here each conversation has a queue: an append
joins it and waits; one flusher per conversation takes up to `FLUSH_MAX`
waiting appends (same lease epoch, none a group change: a group change goes
alone), and under the conversation's lock dedups them (send log, and within
the batch), allocates their seqs in one go and writes them with one batch
(scylla_append.py). Each append gets its own result or its own error; an
append that fails fails only its batch, and the client's resend (same cid)
finds the original or stores it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatplane.storage import scylla_social as social
from chatplane.storage.base import (
    AppendResult,
    ConversationNotFound,
    MembershipChange,
    SendRequest,
    StorageUnavailable,
    StoredMessage,
)
from chatplane.storage.scylla_append import FLUSH_MAX, backoff
from chatplane.storage.scylla_seq import Taken
from chatplane.storage.scylla_statements import message_from_row

if TYPE_CHECKING:
    from chatplane.storage.scylla import ScyllaStorage

MAX_TAKEN = 20  # a batch whose conversation another writer keeps taking gives up


@dataclass
class Pending:
    request: SendRequest
    recipients: Sequence[str] | None
    change: MembershipChange | None
    inboxes: Collection[str] | None = None  # None: every recipient's entry now
    waiter: asyncio.Future[AppendResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, result: AppendResult) -> None:
        if not self.waiter.done():
            self.waiter.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)


def _message_at(request: SendRequest, seq: int) -> StoredMessage:
    return StoredMessage(
        conversation_id=request.conversation_id, seq=seq, message_id=request.message_id,
        sender=request.sender, sender_device=request.sender_device, cid=request.cid,
        text=request.text, sent_at_ms=request.sent_at_ms, payload=request.payload,
        content_type=request.content_type)


class Flusher:
    def __init__(self, storage: ScyllaStorage) -> None:
        self.storage = storage
        self._queues: dict[str, list[Pending]] = {}
        self._running: dict[str, asyncio.Future[None]] = {}

    async def submit(self, request: SendRequest, recipients: Sequence[str] | None,
                     change: MembershipChange | None,
                     inboxes: Collection[str] | None = None) -> AppendResult:
        pending = Pending(request, recipients, change, inboxes)
        conversation_id = request.conversation_id
        self._queues.setdefault(conversation_id, []).append(pending)
        if conversation_id not in self._running:
            self._running[conversation_id] = asyncio.ensure_future(self._drain(conversation_id))
        # shielded: a caller that stops waiting does not cut its batch short
        return await asyncio.shield(pending.waiter)

    async def _drain(self, conversation_id: str) -> None:
        _, _, heads = self.storage._parts()
        try:
            while queue := self._queues.get(conversation_id):
                first = queue[0]
                take = [first]
                if first.change is None:
                    for pending in queue[1:FLUSH_MAX]:
                        if pending.change is not None or pending.request.fence != first.request.fence:
                            break
                        take.append(pending)
                del queue[:len(take)]
                async with heads.conversation_state(conversation_id).lock:
                    await self._batch(conversation_id, take)
        finally:
            self._queues.pop(conversation_id, None)
            self._running.pop(conversation_id, None)

    async def _batch(self, conversation_id: str, take: list[Pending]) -> None:
        appender = self.storage._appender
        assert appender is not None
        try:
            for attempt in range(MAX_TAKEN):
                try:
                    while True:  # a bucket boundary splits a batch in two
                        left = [p for p in take if not p.waiter.done()]
                        if not left:
                            return
                        await self._write(conversation_id, left)
                except Taken:  # another writer took the conversation: take it back, look again
                    await backoff(attempt)
            raise StorageUnavailable(f"{conversation_id} keeps being taken by other writers, "
                                     "retry")
        except BaseException as exc:
            if not isinstance(exc, ConversationNotFound):
                # Unknown outcome: the next batch takes the conversation again,
                # sealing what this one may leave and finishing what it left.
                appender.drop_conversation(conversation_id)
            for pending in take:
                pending.fail(exc)
            if not isinstance(exc, Exception):
                raise

    async def _write(self, conversation_id: str, left: list[Pending]) -> None:
        storage = self.storage
        db, st, heads = storage._parts()
        appender = storage._appender
        assert appender is not None
        fence = left[0].request.fence
        holder = await appender.conversation_holder(conversation_id, fence)
        verify = not storage.sole_writer or fence is not None
        todo: list[Pending] = []
        followers: dict[tuple[str, str, int], list[Pending]] = {}
        interrupted = appender.interrupted.get(conversation_id, set())
        for pending in left:
            request = pending.request
            key = (request.sender, request.sender_device, request.cid)
            if key in followers:  # the same send twice in one batch: one message
                followers[key].append(pending)
                continue
            row = (await heads.find_send_row(request) if await appender.maybe_sent(request)
                   else None)
            if row is not None:
                original = message_from_row(row)
                if original.message_id in interrupted:
                    # ours, from the attempt a Taken cut short: finish and answer it
                    inbox = await appender.finish(original, holder)
                    interrupted.discard(original.message_id)
                    pending.resolve(AppendResult(original, duplicate=False, inbox=tuple(inbox)))
                else:  # answered once its rows are in every datacenter `sync` names
                    await appender.confirm(row, holder, pending.inboxes, verify=verify,
                                           fenced=fence is not None)
                    pending.resolve(AppendResult(original, duplicate=True))
                continue
            followers[key] = []
            todo.append(pending)
        if not todo:
            return
        if not await storage._exists(conversation_id):
            raise ConversationNotFound(conversation_id)
        room = (heads.message_bucket_of(holder.next) + 1) * heads.message_bucket - holder.next + 1
        todo = todo[:room]  # the rest goes in the next round, in the next bucket
        batch = []
        first = await appender.blocks.allocate(holder, len(todo))
        for offset, pending in enumerate(todo):
            recipients, membership = pending.recipients, None
            if pending.change is not None:
                membership = social.encode_change(pending.change)
                if recipients is None:
                    before = await social.member_ids(db, st, conversation_id)
                    recipients = sorted(set(before) | set(social.members_after(
                        before, pending.change)))
            everyone = list(recipients or ())
            written = everyone if pending.inboxes is None else [
                user for user in everyone if user in pending.inboxes]
            batch.append((_message_at(pending.request, first + offset), everyone, written,
                          membership))
        try:
            inboxes = await appender.write(batch, holder, int(time.time() * 1000),
                                           verify=verify,
                                           fenced=fence is not None)
        except Taken:
            appender.interrupted.setdefault(conversation_id, set()).update(
                message.message_id for message, _, _, _ in batch)
            raise
        for pending, (message, everyone, written, _), inbox in zip(todo, batch, inboxes,
                                                                   strict=True):
            if pending.change is not None:  # after the event is stored: a retry re-applies it
                await social.apply_change(db, st, conversation_id, pending.change, message.seq,
                                          message.sent_at_ms)
            owed = tuple(user for user in everyone if user not in written)
            pending.resolve(AppendResult(message, duplicate=False, inbox=tuple(inbox),
                                         owed=owed))
            key = (message.sender, message.sender_device, message.cid)
            for follower in followers.get(key, ()):
                follower.resolve(AppendResult(message, duplicate=True))
