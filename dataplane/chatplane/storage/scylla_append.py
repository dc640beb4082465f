"""The ScyllaDB write path: messages and their inbox entries as plain writes.

A write stores up to `FLUSH_MAX` messages of one conversation (scylla_flush.py
gathers them). Each takes its seq from the conversation's `Holder` and each
recipient's inbox_seq from that user's (scylla_seq.py), in memory; the rows
(timeline, send log, head hint, senders' read positions, inbox entries) go out
as unlogged batches, one request for a 1:1 write, never splitting a
partition's rows (`_send`). In this process appends to one
conversation are serial (the caller holds its lock) and each user's inbox
entries are written under the user's lock, in sorted order of users, so entry
n of an inbox is durable before n+1 is handed out and no inbox has a hole.

Fenced appends (a cluster: several processes share the keyspace) write in two
steps and check the sequence rows after each, with one quorum read:
1. the conversation's rows, then `Blocks.current` on the conversation: if it
   was taken meanwhile the append raises Fenced (its rows may be sealed);
2. the inbox entries, then `Blocks.current` on those inboxes: an inbox taken
   meanwhile (another process appended to that user) is taken back and the
   entries written again (or found, if they landed before the taker's read).
A sole writer's unfenced appends (`chatplane up`: this process is the only
writer) skip the checks and send everything in one request.

Any failure drops the holders involved: the next use takes them again, which
seals whatever an unknown outcome may still leave behind. A message whose
rows landed but whose inbox entries did not is finished by the next taker of
the conversation (`recover`): the timeline row carries its recipients and is
marked done (`fanned_out`) once everything is written, in the conversation's next
batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from cassandra.query import PreparedStatement

from chatplane.storage import cql
from chatplane.storage.base import (
    Fenced,
    InboxItem,
    Recovered,
    SendRequest,
    StorageUnavailable,
    StoredMessage,
)
from chatplane.storage.cql import BATCH_BYTES, BATCH_MAX, approximate_size
from chatplane.storage.scylla_heads import Heads
from chatplane.storage.scylla_seq import Blocks, Holder, Taken
from chatplane.storage.scylla_social import apply_change, decode_change
from chatplane.storage.scylla_statements import Statements, message_from_row

FLUSH_MAX = 16  # messages of one conversation written together
RECOVER_TAIL = 2 * FLUSH_MAX  # messages checked for an unfinished fan-out on a take
SEND_ATTEMPTS = 3  # a batch whose answer was lost is sent again this often at most
MAX_OWNERS = 200_000
MAX_DEVICES = 10_000  # (sender, device) cid tops kept per conversation
REDO_ATTEMPTS = 20  # two writers taking one inbox back and forth: one wins each round
Item = tuple[PreparedStatement, tuple[Any, ...]]


def conversation_key(conversation_id: str) -> str:
    return f"c:{conversation_id}"


def inbox_key(user_id: str) -> str:
    return f"i:{user_id}"


BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.5


async def backoff(attempt: int) -> None:
    """A random pause before taking back what another writer took, doubling per attempt:
    a take (Paxos and a seal) lasts longer than a short pause, so two writers pausing
    briefly would keep taking the sequence from each other mid-write; growing pauses
    let one finish."""
    await asyncio.sleep(random.uniform(0.001, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** attempt)))


def _now_ms() -> int:
    return int(time.time() * 1000)


class Appender:
    def __init__(self, db: cql.CqlSession, st: Statements, heads: Heads, step: int) -> None:
        self.db, self.st, self.heads = db, st, heads
        self.blocks = Blocks(db, st, f"store-{uuid.uuid4().hex[:12]}", step)
        # conversation -> the seqs of its last batch, not marked done yet
        self._unmarked: dict[str, list[int]] = {}
        # conversation -> message_ids of unfenced appends cut short by a Taken
        self.interrupted: dict[str, set[str]] = {}
        # conversation -> (sender, device, cid bucket) -> the highest cid stored
        # (read once per holder, then kept): see `maybe_sent`
        self._cids: dict[str, dict[tuple[str, str, int], int]] = {}
        self._owners: dict[str, str] = {}  # conversation -> the lease owner acquire named
        # regions on one keyspace (ScyllaStorage.serve_users): the recipients whose
        # entries this process may write (those its region homes); None: every one
        self.users_here: Callable[[Sequence[str]], Awaitable[list[str]]] | None = None
        self.recovered: Recovered | None = None  # told of what `_redo` finished

    # -- holders -------------------------------------------------------------

    async def take_conversation(self, conversation_id: str, *, raise_epoch: bool,
                                epoch: int | None, owner: str | None = None) -> Holder:
        """Take the conversation's sequence (the caller holds its lock) and
        finish whatever its previous holder left half done."""
        heads = self.heads
        self._unmarked.pop(conversation_id, None)
        self._cids.pop(conversation_id, None)
        holder = await self.blocks.take(
            conversation_key(conversation_id),
            lambda: heads.data_head(heads.st.top_seq, conversation_id,
                                    heads.st.conversation_hint, heads.message_bucket),
            lambda top, reserved, ts: heads.seal_timeline(conversation_id, top, reserved, ts),
            raise_epoch=raise_epoch, epoch=epoch,
            owner=owner or self._owners.get(conversation_id))
        if owner is not None:
            if len(self._owners) > MAX_OWNERS:
                self._owners.clear()
            self._owners[conversation_id] = owner
        await self._recover(conversation_id, holder)
        return holder

    async def conversation_holder(self, conversation_id: str, fence: int | None) -> Holder:
        holder = self.blocks.get(conversation_key(conversation_id))
        if holder is not None:
            if fence is None or holder.epoch == fence:
                return holder
            if fence < holder.epoch:
                raise Fenced(f"{conversation_id}: lease epoch {fence} is stale "
                             f"(now {holder.epoch})")
        return await self.take_conversation(conversation_id, raise_epoch=False, epoch=fence)

    def drop_conversation(self, conversation_id: str) -> None:
        self.blocks.drop(conversation_key(conversation_id))
        self._unmarked.pop(conversation_id, None)
        self._cids.pop(conversation_id, None)

    async def maybe_sent(self, request: SendRequest) -> bool:
        """False when (sender, device, cid) is surely new to the conversation,
        so the send log need not be read: its cid is above the highest stored
        for the device, read once after the take (recovery has written the
        send log of whatever the previous holder left unfinished) and kept up
        to date by this holder's appends. Devices number sends increasingly,
        so only resends and reordered sends pay the read."""
        key = (request.sender, request.sender_device, request.cid // self.heads.cid_bucket)
        known = self._cids.setdefault(request.conversation_id, {})
        top = known.get(key)
        if top is None:
            rows = await self.db.run(self.st.top_cid, (request.conversation_id, *key))
            top = known[key] = int(rows[0]["cid"]) if rows else -1
            if len(known) > MAX_DEVICES:
                known.clear()
        return request.cid <= top

    def sent(self, message: StoredMessage) -> None:
        """The message's cid may be in the send log from now on."""
        key = (message.sender, message.sender_device, message.cid // self.heads.cid_bucket)
        known = self._cids.setdefault(message.conversation_id, {})
        if key in known:
            known[key] = max(known[key], message.cid)

    async def _inbox_holder(self, user: str) -> Holder:
        """The user's inbox sequence (the caller holds the user's lock)."""
        holder = self.blocks.get(inbox_key(user))
        if holder is not None:
            return holder
        heads = self.heads
        return await self.blocks.take(
            inbox_key(user),
            lambda: heads.data_head(heads.st.top_inbox, user, heads.st.inbox_hint,
                                    heads.inbox_bucket),
            lambda top, reserved, ts: heads.seal_inbox(user, top, reserved, ts),
            raise_epoch=False, epoch=None)

    # -- writing -------------------------------------------------------------

    async def write(self, batch: Sequence[tuple[StoredMessage, Sequence[str], Sequence[str],
                                                str | None]],
                    holder: Holder, appended_at: int, *, verify: bool,
                    fenced: bool) -> list[list[InboxItem]]:
        """Store new messages at consecutive seqs of holder (allocated by the
        caller, all in one timeline bucket), each given with its recipients
        (all recorded in its row), the recipients to write entries for now,
        and its group change. A message whose entries are not all written is
        left unfinished until `finished` (or the next taker's recovery).
        verify: others may write the same sequences (two steps, each
        checked); fenced: the appends carry a lease epoch (a conversation
        taken meanwhile raises Fenced, else Taken)."""
        st, heads = self.st, self.heads
        conversation_id = batch[0][0].conversation_id
        rows: list[Item] = []
        for message, recipients, _, membership in batch:
            seq = message.seq
            rows += [
                (st.write_message, (conversation_id, heads.message_bucket_of(seq), seq,
                                    message.message_id, message.sender, message.sender_device,
                                    message.cid, message.text, message.sent_at_ms,
                                    message.payload, message.content_type, list(recipients),
                                    appended_at, membership, holder.ts)),
                self._send_row(message, holder),
                (st.set_read, (seq, seq, conversation_id, message.sender)),
            ]
        last = batch[-1][0]
        rows.append((st.set_conversation_hint, (holder.ts, last.seq, last.sent_at_ms,
                                                conversation_id)))
        # the previous batch's messages: it succeeded as a whole, they are finished
        for previous in self._unmarked.pop(conversation_id, ()):
            rows.append((st.mark_done, (holder.ts, conversation_id,
                                        heads.message_bucket_of(previous), previous)))
        for message, _, _, _ in batch:  # from now on they may be stored: resends read the log
            self.sent(message)
        inboxes = await self._with_inboxes([(m, w) for m, _, w, _ in batch], holder, appended_at,
                                           rows, verify=verify, resume=False, fenced=fenced)
        # done in the next batch; those with entries owed elsewhere once `finished`
        self._unmarked.setdefault(conversation_id, []).extend(
            message.seq for message, recipients, written, _ in batch
            if len(written) == len(recipients))
        self.db.stats.appends += len(batch)
        return inboxes

    def _send_row(self, message: StoredMessage, holder: Holder) -> Item:
        return (self.st.insert_send, (
            message.conversation_id, message.sender, message.sender_device,
            message.cid // self.heads.cid_bucket, message.cid, message.seq, holder.ts))

    async def _with_inboxes(self, batch: Sequence[tuple[StoredMessage, Sequence[str]]],
                            holder: Holder | None, appended_at: int, rows: list[Item],
                            *, verify: bool, resume: bool, fenced: bool = False,
                            fresh: frozenset[int] = frozenset(),
                            rewrite: bool = False) -> list[list[InboxItem]]:
        users = sorted({user for _, recipients in batch for user in recipients})
        async with contextlib.AsyncExitStack() as stack:
            for user in users:  # sorted: two appends never wait on each other's users
                await stack.enter_async_context(self.heads.inbox_lock(user))
            try:
                numbers = await self._write_locked(batch, holder, users, appended_at, rows,
                                                   verify=verify, resume=resume, fenced=fenced,
                                                   fresh=fresh, rewrite=rewrite)
            except BaseException:
                for user in users:  # their next entry may be written or not: take again
                    self.blocks.drop(inbox_key(user))
                raise
        return [[InboxItem(user, numbers[(message.seq, user)], message) for user in recipients]
                for message, recipients in batch]

    async def _write_locked(self, batch: Sequence[tuple[StoredMessage, Sequence[str]]],
                            holder: Holder | None, users: list[str], appended_at: int,
                            rows: list[Item], *, verify: bool, resume: bool,
                            fenced: bool, fresh: frozenset[int],
                            rewrite: bool) -> dict[tuple[int, str], int]:
        numbers: dict[tuple[int, str], int] = {}
        conversation_id = batch[0][0].conversation_id
        pending, search = users, set(users) if resume else set()
        if verify and holder is not None:  # step 1: the conversation's rows, while it is still ours
            await self._send(rows)
            rows = []
            if await self.blocks.current([holder]):
                self.drop_conversation(conversation_id)
                what = f"{conversation_id}: taken over during an append"
                raise Fenced(what) if fenced else Taken(what)
        for attempt in range(REDO_ATTEMPTS):
            holders = dict(zip(pending, await cql.gather_bounded(
                self._inbox_holder(user) for user in pending), strict=True))
            for message, recipients in batch:
                for user in dict.fromkeys(recipients):
                    if user not in holders:
                        continue
                    found = (await self.heads.find_entry(user, message, appended_at,
                                                         holders[user].next - 1)
                             if user in search and message.seq not in fresh else None)
                    inbox = holders[user]
                    if found is not None:
                        numbers[(message.seq, user)] = found
                        if rewrite:  # it may be in this datacenter only: again, at our level
                            rows.append((self.st.write_inbox, (
                                user, self.heads.inbox_bucket_of(found), found, conversation_id,
                                message.seq, _now_ms(), inbox.ts)))
                        continue
                    n = await self.blocks.allocate(inbox)
                    numbers[(message.seq, user)] = n
                    rows.append((self.st.write_inbox, (user, self.heads.inbox_bucket_of(n), n,
                                                       conversation_id, message.seq, _now_ms(),
                                                       inbox.ts)))
                    if (n - 1) % self.heads.inbox_bucket == 0:  # it opens a bucket
                        rows.append((self.st.set_inbox_hint, (inbox.ts, n, user)))
            await self._send(rows)
            rows = []
            if not verify:
                return numbers
            # step 2: entries written under a holder someone took meanwhile may
            # be sealed: take the inbox back and write them again (or find them)
            stale = await self.blocks.current(list(holders.values()))
            if not stale:
                return numbers
            pending = [holder.key[2:] for holder in stale]
            for user in pending:
                self.blocks.drop(inbox_key(user))
            search |= set(pending)
            fresh = frozenset()  # this attempt may have written them: look from now on
            await backoff(attempt)
        raise StorageUnavailable(f"inboxes of {conversation_id} keep being taken by other "
                                 "writers, retry")

    async def _send(self, rows: list[Item]) -> None:
        """Send rows as unlogged batches that never split a partition's rows
        (Cassandra applies one partition's part of a batch atomically, so a
        timeline or an inbox never gets a later row without the earlier ones
        of the same batch), large rows alone (under the server's batch size
        limit). Rows of a partition that continue another partition of the
        same timeline or inbox (a bucket boundary) go in a second round, after
        the first partition's rows were acknowledged."""
        if not rows:
            return
        parts: dict[tuple[Any, ...], list[Item]] = {}
        for row in rows:
            parts.setdefault(self._partition(row), []).append(row)
        first: list[list[Item]] = []
        later: list[list[Item]] = []
        for key, part in parts.items():
            previous = (*key[:-1], key[-1] - 1) if isinstance(key[-1], int) else None
            (later if previous in parts else first).append(part)
        for round_parts in (first, later):
            chunks: list[list[Item]] = []
            current: list[Item] = []
            for part in round_parts:
                if approximate_size(part) > BATCH_BYTES or len(current) + len(part) > BATCH_MAX:
                    if current:
                        chunks.append(current)
                    current = []
                if approximate_size(part) > BATCH_BYTES:
                    chunks += [[row] for row in part]  # alone: one statement is no batch
                    continue
                current += part
            if current:
                chunks.append(current)
            await cql.gather_bounded(self._send_chunk(chunk) for chunk in chunks)

    def _partition(self, row: Item) -> tuple[Any, ...]:
        """The partition a row of the write path goes to: (table, key...)."""
        statement, p = row
        kind = self.db.kind_of(statement)[0]
        if kind == "write_message":
            return ("messages", p[0], p[1])
        if kind == "mark_done":
            return ("messages", p[1], p[2])
        if kind == "write_inbox":
            return ("inbox", p[0], p[1])
        if kind == "insert_send":
            return ("sends", *p[:4])
        if kind == "set_read":
            return ("reads", p[2])
        if kind == "set_conversation_hint":
            return ("conversation_heads", p[3])
        if kind == "set_inbox_hint":
            return ("inbox_heads", p[2])
        return ("other", id(row))

    async def _send_chunk(self, rows: list[Item]) -> None:
        """Plain writes at fixed keys and timestamps: re-sending one whose
        answer was lost writes the same cells again, nothing new."""
        for attempt in range(SEND_ATTEMPTS):
            try:
                await self.db.write(rows)
                return
            except StorageUnavailable:
                if attempt == SEND_ATTEMPTS - 1:
                    raise

    async def finish(self, message: StoredMessage, holder: Holder) -> list[InboxItem]:
        """The inbox entries of a stored message (found, or written now)."""
        rows = await self.heads.read_message_rows(message.conversation_id, message.seq,
                                                  serial=False)
        if not rows:
            raise StorageUnavailable(f"{message.conversation_id}#{message.seq} not readable")
        found = await self._with_inboxes([(message, list(rows[0]["recipients"] or ()))], holder,
                                         int(rows[0]["appended_at_ms"] or 0), [],
                                         verify=True, resume=True)
        return found[0]

    async def fan_out(self, conversation_id: str, entries: Sequence[tuple[int, Sequence[str]]],
                      *, verify: bool, fresh: frozenset[int] = frozenset()) -> list[InboxItem]:
        """Storage.fan_out: the entries of stored messages for the given users,
        found or written under this process's holders of their inboxes (no
        hold on the conversation: its owner asked for them); the seqs in
        `fresh` are written without looking for an earlier attempt's entry."""
        ordered = sorted(entries, key=lambda entry: entry[0])
        read = await cql.gather_bounded(
            self.heads.read_message_rows(conversation_id, seq, serial=False)
            for seq, _ in ordered)
        batch: list[tuple[StoredMessage, Sequence[str]]] = []
        appended_at: int | None = None
        for (seq, users), rows in zip(ordered, read, strict=True):
            if not rows:  # unseen (or gone): retriable, never skipped as done
                raise StorageUnavailable(f"{conversation_id}#{seq} not readable")
            batch.append((message_from_row(rows[0]), list(dict.fromkeys(users))))
            at = int(rows[0]["appended_at_ms"] or 0)
            appended_at = at if appended_at is None else min(appended_at, at)
        if not batch:
            return []
        found = await self._with_inboxes(batch, None, appended_at or 0, [], verify=verify,
                                         resume=True, fresh=fresh)
        return [item for items in found for item in items]

    def finished(self, conversation_id: str, seqs: Sequence[int]) -> None:
        """Storage.fanned_out: marked done with the conversation's next batch
        (lost with a failed batch: the next taker looks at them again)."""
        self._unmarked.setdefault(conversation_id, []).extend(seqs)

    # -- recovery ------------------------------------------------------------

    async def _recover(self, conversation_id: str, holder: Holder) -> None:
        """Finish recent messages whose fan-out may have been cut short."""
        top = holder.next - 1
        if top < 1:
            return
        for row in await self.heads.timeline_rows_down(conversation_id, top, RECOVER_TAIL):
            if not row["fanned_out"]:
                await self._redo(conversation_id, row, holder)

    async def confirm(self, row: dict[str, Any], holder: Holder,
                      inboxes: Collection[str] | None, *, verify: bool, fenced: bool) -> None:
        """A duplicate's original (its timeline row, read in this datacenter) is at
        the write level before the resend is answered. Marked done, or in this
        holder's last batch (which succeeded): it is. Else it may come from an append
        refused after some of its rows landed (at EACH_QUORUM: in this datacenter
        only; a take's recovery rewrites such a message, this covers whatever did not
        go through one): its rows, and the entries the resend would write
        (`inboxes`, None: all), are written again. Not marked done: entries owed to
        other writers may still be missing. verify, fenced: as `write`'s."""
        conversation_id = row["conversation_id"]
        if row["fanned_out"] or row["seq"] in self._unmarked.get(conversation_id, ()):
            return
        everyone = list(row["recipients"] or ())
        await self._rewrite(conversation_id, row, holder, everyone if inboxes is None else
                            [user for user in everyone if user in inboxes],
                            verify=verify, fenced=fenced)
        if row["membership"]:  # applied again: idempotent, as recovery does
            await apply_change(self.db, self.st, conversation_id,
                               decode_change(row["membership"]), row["seq"], row["sent_at_ms"])

    async def _rewrite(self, conversation_id: str, row: dict[str, Any], holder: Holder,
                       recipients: Sequence[str], *, verify: bool = False,
                       fenced: bool = False) -> None:
        """Write a stored message's rows again at the write level: the message row, its
        send log entry and the inbox entries of `recipients` (found, or written now).
        They may be in this datacenter only (a write refused at EACH_QUORUM after some
        replicas took it, with no hinted handoff to copy them): rewritten, they are in
        every datacenter the write level names once this returns."""
        message = message_from_row(row)
        appended_at = int(row["appended_at_ms"] or 0)
        rows = [(self.st.write_message, (
                    conversation_id, self.heads.message_bucket_of(message.seq), message.seq,
                    message.message_id, message.sender, message.sender_device, message.cid,
                    message.text, message.sent_at_ms, message.payload, message.content_type,
                    list(row["recipients"] or ()), appended_at, row["membership"], holder.ts)),
                self._send_row(message, holder)]
        await self._with_inboxes([(message, list(recipients))], holder, appended_at, rows,
                                 verify=verify, resume=True, fenced=fenced, rewrite=True)

    async def _redo(self, conversation_id: str, row: dict[str, Any], holder: Holder) -> None:
        """Finish a message an append may have left half done: its rows rewritten
        (`_rewrite`, the entries of the recipients this region writes), its
        membership change applied, then marked done, and the peers told."""
        message = message_from_row(row)
        recipients = list(row["recipients"] or ())
        if self.users_here is not None:  # another region writes its users' entries
            recipients = await self.users_here(recipients)
        await self._rewrite(conversation_id, row, holder, recipients)
        if row["membership"]:
            await apply_change(self.db, self.st, conversation_id,
                               decode_change(row["membership"]), message.seq, message.sent_at_ms)
        await self.db.run(self.st.mark_done, (holder.ts, conversation_id,
                                              self.heads.message_bucket_of(message.seq),
                                              message.seq))
        if self.recovered is not None:  # the peers told now, before any later seq
            self.recovered(message, list(row["recipients"] or ()), recipients)
