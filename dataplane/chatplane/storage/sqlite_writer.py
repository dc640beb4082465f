"""The SQLite writer thread's own state, and what a failed write does.

`Writer` is owned by the writer thread only (storage/sqlite.py runs it): the
conversation and inbox heads it caches, the head updates pending in the open
transaction (written once per batch), and the write rules (fenced append,
membership change, lease). While `deferring` (the batch's fast path), appends
queue their message and inbox rows and `flush_rows` writes them with one
`executemany` each; a highest-cid cache per (conversation, sender, device)
spares the dedup lookup for a cid above every stored one (the usual send).
The functions below decide what a failure costs:
`failure` turns any exception into the StorageError its caller gets,
`store_fault` tells a fault of the store itself (busy, I/O, full, corrupt)
from a fault of one write, `rollback` ends a failed transaction and drops
what the writer cached, and `check_integrity` refuses a damaged file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from chatplane.storage import sqlite_social as social
from chatplane.storage.base import (
    GROUP,
    AppendResult,
    ConversationNotFound,
    Fenced,
    InboxItem,
    MembershipChange,
    NotStoredYet,
    SendRequest,
    StorageError,
    StorageUnavailable,
    StoredMessage,
)

log = logging.getLogger("chatplane.storage.sqlite")

FIND_BACK = 10_000  # inbox entries fan_out looks back for one written before
MAX_CID_CACHE = 100_000  # (conversation, sender, device) keys; cleared when full

MESSAGE_COLUMNS = (
    "conversation_id, seq, message_id, sender, sender_device, cid, text, sent_at_ms,"
    " payload, content_type"
)


def message_from_row(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(
        conversation_id=row[0],
        seq=row[1],
        message_id=row[2],
        sender=row[3],
        sender_device=row[4],
        cid=row[5],
        text=row[6],
        sent_at_ms=row[7],
        payload=bytes(row[8]),
        content_type=row[9],
    )


class Writer:
    """State owned by the writer thread only."""

    def __init__(self, db: sqlite3.Connection, region_of: Callable[[], str] = str) -> None:
        self.db = db
        # the region this store serves (ReplicatedLog.region; "": regions not linked)
        self.region_of = region_of
        # user -> the region of its home row (None: no row): every home write runs on
        # this thread (offer_home, take_over_homes), which keeps it exact
        self.user_homes: dict[str, str | None] = {}
        # users whose inbox an admin move is taking away (regions/user_moves.py): their
        # entries are recorded owed, not written, until the move is over (kept across a
        # rolled-back transaction: only the move's own jobs change it)
        self.held_inboxes: set[str] = set()
        self.conv_heads: dict[str, int] = {}
        self.inbox_heads: dict[str, int] = {}
        self.dirty_convs: dict[str, tuple[int, int]] = {}
        self.dirty_reads: dict[tuple[str, str], int] = {}
        self.deferring = False  # queue append rows for flush_rows (the batch fast path)
        self.pending_messages: list[tuple[Any, ...]] = []
        self.pending_inbox: list[tuple[str, int, str, int]] = []
        self.pending_cids: dict[tuple[str, str, str, int], StoredMessage] = {}
        # (conversation, sender, device) -> the highest cid stored: a higher
        # cid cannot be a resend, so its dedup lookup is skipped
        self.max_cids: dict[tuple[str, str, str], int] = {}
        self.superseded = 0  # messages of a lost home replaced by the new home's

    def forget(self) -> None:
        """Drop cached heads (they are re-read), after writing the pending ones:
        the transaction still holds them."""
        self.flush_heads()
        self.conv_heads.clear()
        self.inbox_heads.clear()
        self.max_cids.clear()  # shared: another process may have stored cids since
        self.user_homes.clear()

    def flush_rows(self) -> None:
        """Write the queued message and inbox rows, one statement each."""
        if self.pending_messages:
            self.db.executemany(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self.pending_messages)
            self.pending_messages.clear()
            self.pending_cids.clear()
        if self.pending_inbox:
            self.db.executemany(
                "INSERT INTO inbox (user_id, inbox_seq, conversation_id, seq) VALUES (?, ?, ?, ?)",
                self.pending_inbox)
            self.pending_inbox.clear()

    def flush_heads(self) -> None:
        self.flush_rows()  # a head never points past the rows written
        db = self.db
        if self.dirty_convs:
            db.executemany("UPDATE conversations SET head_seq = ?, last_activity_ms = ? WHERE id = ?",
                           [(seq, at, cid) for cid, (seq, at) in self.dirty_convs.items()])
            self.dirty_convs.clear()
        if self.dirty_reads:
            db.executemany(
                "UPDATE user_conversations SET read_seq = ? WHERE user_id = ? AND"
                " conversation_id = ? AND read_seq < ?",
                [(seq, user, cid, seq) for (user, cid), seq in self.dirty_reads.items()])
            self.dirty_reads.clear()

    def after_failed_job(self) -> None:
        """A job was rolled back to its savepoint, maybe half way: the head
        marks it left point at rows that are gone, and a head kept from them
        would leave a gap in the seqs. Each mark whose row is gone is taken
        again from the rows that stay (earlier jobs of this transaction
        included); then the marks are written and the cached heads forgotten
        (an inbox head is read again from the inbox rows that stay)."""
        db = self.db
        for conversation_id, (seq, _) in list(self.dirty_convs.items()):
            if not _exists(db, "messages", "conversation_id", conversation_id, "seq", seq):
                row = db.execute(
                    "SELECT m.seq, m.sent_at_ms FROM messages m JOIN conversations c"
                    " ON c.id = m.conversation_id WHERE m.conversation_id = ?"
                    " AND m.seq > c.head_seq ORDER BY m.seq DESC LIMIT 1",
                    (conversation_id,)).fetchone()
                if row is None:
                    del self.dirty_convs[conversation_id]
                else:
                    self.dirty_convs[conversation_id] = (int(row[0]), int(row[1]))
        for (user_id, conversation_id), seq in list(self.dirty_reads.items()):
            if not _exists(db, "messages", "conversation_id", conversation_id, "seq", seq):
                row = db.execute("SELECT max(seq) FROM messages WHERE conversation_id = ?"
                                 " AND sender = ?", (conversation_id, user_id)).fetchone()
                if row[0] is None:
                    del self.dirty_reads[(user_id, conversation_id)]
                else:
                    self.dirty_reads[(user_id, conversation_id)] = int(row[0])
        self.forget()

    def discard(self) -> None:
        """The transaction rolled back: nothing pending is true any more."""
        self.pending_messages.clear()
        self.pending_inbox.clear()
        self.pending_cids.clear()
        self.max_cids.clear()
        self.dirty_convs.clear()
        self.dirty_reads.clear()
        self.conv_heads.clear()
        self.inbox_heads.clear()
        self.user_homes.clear()

    def homed_here(self, user_id: str) -> bool:
        """Whether this store writes the user's inbox entries: always when regions are
        not linked; else when the user is homed in this region, or has no home row yet
        (the im tier places it before it appends: regions/homes.py, `Homes.users`);
        never while an admin move holds the user's inbox (`held_inboxes`)."""
        region = self.region_of()
        if not region:
            return True
        if user_id in self.held_inboxes:
            return False
        if user_id not in self.user_homes:
            if len(self.user_homes) >= MAX_CID_CACHE:
                self.user_homes.clear()
            row = self.db.execute("SELECT region FROM homes WHERE kind = 'user' AND key = ?",
                                  (user_id,)).fetchone()
            self.user_homes[user_id] = None if row is None else str(row[0])
        home = self.user_homes[user_id]
        return home is None or home == region

    def conv_head(self, conversation_id: str) -> int:
        head = self.conv_heads.get(conversation_id)
        if head is None:
            row = self.db.execute(
                "SELECT head_seq FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
            if row is None:
                raise ConversationNotFound(conversation_id)
            head = self.conv_heads[conversation_id] = row[0]
        return head

    def inbox_head(self, user_id: str) -> int:
        head = self.inbox_heads.get(user_id)
        if head is None:
            head = self.inbox_heads[user_id] = inbox_head(self.db, user_id)
        return head

    def check_fence(self, request: SendRequest) -> None:
        """In the append's own transaction, under the write lock: a taker's
        `acquire` either committed before (the epoch differs: refused) or
        waits for this transaction."""
        if request.fence is None:
            return
        row = self.db.execute("SELECT epoch FROM leases WHERE conversation_id = ?",
                              (request.conversation_id,)).fetchone()
        if row is None or row[0] != request.fence:
            raise Fenced(f"{request.conversation_id}: lease epoch {request.fence} is stale"
                         f" (now {row[0] if row else 'none'})")

    def acquire(self, conversation_id: str, owner: str) -> int:
        self.conv_heads.pop(conversation_id, None)  # the new owner starts from the table
        row = self.db.execute(
            "INSERT INTO leases (conversation_id, epoch, owner) VALUES (?, 1, ?)"
            " ON CONFLICT (conversation_id) DO UPDATE SET epoch = epoch + 1, owner = excluded.owner"
            " RETURNING epoch", (conversation_id, owner)).fetchone()
        return int(row[0])

    def stored_before(self, request: SendRequest) -> StoredMessage | None:
        """The message this device already stored under this cid, if any."""
        key = (request.conversation_id, request.sender, request.sender_device)
        top = self.max_cids.get(key)
        if top is None:
            if len(self.max_cids) >= MAX_CID_CACHE:
                self.max_cids.clear()
            row = self.db.execute(
                "SELECT max(cid) FROM messages WHERE conversation_id = ? AND sender = ?"
                " AND sender_device = ?", key).fetchone()
            top = self.max_cids[key] = row[0] or 0
        if request.cid > top:
            return None  # above every stored cid: new (the usual case, no lookup)
        queued = self.pending_cids.get((*key, request.cid))
        if queued is not None:
            return queued
        row = self.db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND sender = ?"
            " AND sender_device = ? AND cid = ?", (*key, request.cid)).fetchone()
        return None if row is None else message_from_row(row)

    def append(self, request: SendRequest, recipients: Sequence[str],
               inboxes: Collection[str] | None = None) -> AppendResult:
        db = self.db
        self.check_fence(request)
        head = self.conv_head(request.conversation_id)
        earlier = self.stored_before(request)
        if earlier is not None:
            return AppendResult(message=earlier, duplicate=True)
        seq = head + 1
        message = StoredMessage(
            conversation_id=request.conversation_id,
            seq=seq,
            message_id=request.message_id,
            sender=request.sender,
            sender_device=request.sender_device,
            cid=request.cid,
            text=request.text,
            sent_at_ms=request.sent_at_ms,
            payload=request.payload,
            content_type=request.content_type,
        )
        row = (
            message.conversation_id, seq, message.message_id, message.sender,
            message.sender_device, message.cid, message.text, message.sent_at_ms,
            message.payload, message.content_type,
        )
        key = (request.conversation_id, request.sender, request.sender_device)
        if self.deferring:
            self.pending_messages.append(row)
            self.pending_cids[(*key, request.cid)] = message
        else:
            db.execute(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row)
        if request.cid > self.max_cids.get(key, 0):
            self.max_cids[key] = request.cid
        # heads, activity and the sender's read position are written once per
        # batch (flush_heads), not once per message
        self.dirty_convs[request.conversation_id] = (seq, request.sent_at_ms)
        # one's own message is read by definition: it never counts as unread
        self.dirty_reads[(request.sender, request.conversation_id)] = seq
        self.conv_heads[request.conversation_id] = seq
        items = [self.add_entry(user_id, message) for user_id in
                 self.written_here(message, recipients) if inboxes is None or user_id in inboxes]
        owed = () if inboxes is None else tuple(u for u in recipients if u not in inboxes)
        if owed:  # with the message: the next owner finishes it if this one cannot
            self.db.execute("INSERT INTO fanouts (conversation_id, seq, users) VALUES (?, ?, ?)",
                            (message.conversation_id, seq, json.dumps(owed)))
        return AppendResult(message=message, duplicate=False, inbox=tuple(items), owed=owed)

    def add_entry(self, user_id: str, message: StoredMessage) -> InboxItem:
        """The user's next inbox entry, referencing `message`."""
        inbox_seq = self.inbox_head(user_id) + 1
        entry = (user_id, inbox_seq, message.conversation_id, message.seq)
        if self.deferring:
            self.pending_inbox.append(entry)
        else:
            self.db.execute(
                "INSERT INTO inbox (user_id, inbox_seq, conversation_id, seq) VALUES (?, ?, ?, ?)",
                entry)
        self.inbox_heads[user_id] = inbox_seq
        return InboxItem(user_id=user_id, inbox_seq=inbox_seq, message=message)

    def apply_replicated(self, message: StoredMessage, recipients: Sequence[str],
                         supersede: bool = False) -> list[InboxItem]:
        """A peer home's message at its own seq (ReplicatedLog.apply_log): nothing
        when stored before, StorageError for a hole (this store misses earlier seqs).
        `supersede` (an entry of a home that took over, epoch raised): a different
        message stored here at that seq, sequenced by a lost home and never
        replicated (so never acked in sync), is replaced by the home's."""
        head = self.conv_head(message.conversation_id)
        if message.seq <= head:
            if supersede:
                self._supersede(message)
            return []
        if message.seq != head + 1:
            raise StorageError(f"{message.conversation_id}: replicated seq {message.seq}"
                               f" after head {head} would leave a hole")
        row = (message.conversation_id, message.seq, message.message_id, message.sender,
               message.sender_device, message.cid, message.text, message.sent_at_ms,
               message.payload, message.content_type)
        if self.deferring:
            self.pending_messages.append(row)
        else:
            self.db.execute(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row)
        key = (message.conversation_id, message.sender, message.sender_device)
        if message.cid > self.max_cids.get(key, 0):
            self.max_cids[key] = message.cid
        self.dirty_convs[message.conversation_id] = (message.seq, message.sent_at_ms)
        self.dirty_reads[(message.sender, message.conversation_id)] = message.seq
        self.conv_heads[message.conversation_id] = message.seq
        return [self.add_entry(user_id, message)
                for user_id in self.written_here(message, recipients)]

    def written_here(self, message: StoredMessage, recipients: Sequence[str]) -> list[str]:
        """The recipients whose entries this store writes (homed here); the others'
        are owed by their homes until their entries arrive (`inbox_owed`)."""
        if not self.region_of():  # regions not linked: every entry is written here
            return list(recipients)
        mine = []
        for user_id in recipients:
            if self.homed_here(user_id):
                mine.append(user_id)
            else:
                self.db.execute("INSERT OR IGNORE INTO inbox_owed (user_id, conversation_id,"
                                " seq) VALUES (?, ?, ?)",
                                (user_id, message.conversation_id, message.seq))
        return mine

    def write_owed(self, users: Sequence[str]) -> list[InboxItem]:
        """A takeover or an admin move made these users homed here (or a move given up
        left them here): the entries owed (their old home never wrote or shipped them),
        written now, each conversation's in seq order."""
        self.flush_rows()
        written: list[InboxItem] = []
        for user_id in users:
            columns = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))
            rows = self.db.execute(
                f"SELECT {columns} FROM inbox_owed o JOIN messages m"
                " ON m.conversation_id = o.conversation_id AND m.seq = o.seq"
                " WHERE o.user_id = ? ORDER BY o.conversation_id, o.seq", (user_id,)).fetchall()
            written += [self.add_entry(user_id, message_from_row(row)) for row in rows]
            self.db.execute("DELETE FROM inbox_owed WHERE user_id = ?", (user_id,))
        self.flush_rows()
        return written

    def apply_inbox_entry(self, user_id: str, inbox_seq: int, conversation_id: str,
                          seq: int) -> InboxItem | None:
        """The user's home's inbox entry (ReplicatedLog.apply_log): stored at its
        inbox_seq, the home's replacing another entry stored there (the home's sequence
        is the user's); None when stored before. StorageError for a hole, or for a
        message this store does not hold yet (another region's, not applied here yet:
        the batch is tried again, never stored as an entry nobody can read)."""
        self.flush_rows()  # rows queued in this batch are read like stored ones
        row = self.db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE"
                              " conversation_id = ? AND seq = ?",
                              (conversation_id, seq)).fetchone()
        if row is None:  # before any write: the batch may stop here (LogBlocked)
            raise NotStoredYet(f"inbox entry {user_id}#{inbox_seq} names"
                               f" {conversation_id}#{seq}, not stored here yet")
        # the home wrote it: no longer owed here
        self.db.execute("DELETE FROM inbox_owed WHERE user_id = ? AND conversation_id = ?"
                        " AND seq = ?", (user_id, conversation_id, seq))
        head = self.inbox_head(user_id)
        if inbox_seq <= head:
            stored = self.db.execute("SELECT conversation_id, seq FROM inbox WHERE user_id = ?"
                                     " AND inbox_seq = ?", (user_id, inbox_seq)).fetchone()
            if stored is not None and (stored[0], int(stored[1])) == (conversation_id, seq):
                return None
            log.warning("inbox entry %s#%d: %s replaced by its home's %s#%d", user_id,
                        inbox_seq, "none" if stored is None else f"{stored[0]}#{stored[1]}",
                        conversation_id, seq)
            self.db.execute("INSERT OR REPLACE INTO inbox (user_id, inbox_seq, conversation_id,"
                            " seq) VALUES (?, ?, ?, ?)", (user_id, inbox_seq, conversation_id, seq))
            self.superseded += 1
            return InboxItem(user_id, inbox_seq, message_from_row(row))
        if inbox_seq != head + 1:
            raise StorageError(f"inbox entry {user_id}#{inbox_seq} after head {head}"
                               " would leave a hole")
        self.db.execute("INSERT INTO inbox (user_id, inbox_seq, conversation_id, seq)"
                        " VALUES (?, ?, ?, ?)", (user_id, inbox_seq, conversation_id, seq))
        self.inbox_heads[user_id] = inbox_seq
        return InboxItem(user_id, inbox_seq, message_from_row(row))

    def _supersede(self, message: StoredMessage) -> None:
        """Put the home's `message` at its seq in place of another one stored there (its
        inbox entries, which name (conversation, seq), then read the home's)."""
        self.flush_rows()  # a row queued in this batch is read like a stored one
        row = self.db.execute("SELECT message_id FROM messages WHERE conversation_id = ?"
                              " AND seq = ?", (message.conversation_id, message.seq)).fetchone()
        if row is not None and row[0] == message.message_id:
            return  # the usual case: the same message
        # the superseded row, and one of the lost home's holding this cid at another
        # seq (the device's resend, which the new home sequenced afresh)
        self.db.execute(
            "DELETE FROM messages WHERE conversation_id = ? AND (seq = ? OR (sender = ?"
            " AND sender_device = ? AND cid = ?))",
            (message.conversation_id, message.seq, message.sender, message.sender_device,
             message.cid))
        self.db.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.conversation_id, message.seq, message.message_id, message.sender,
             message.sender_device, message.cid, message.text, message.sent_at_ms,
             message.payload, message.content_type))
        self.superseded += 1

    def apply_replicated_group(self, message: StoredMessage, change: MembershipChange | None,
                               large_above: int | None,
                               supersede: bool = False) -> list[InboxItem]:
        """A peer home's group message (ReplicatedLog.apply_log): its change first, at
        its seq (the creation makes the group), then the message with the entries the
        home wrote: the members before and after it, or in a large group only those the
        change adds or removes. Nothing when stored before; a hole raises StorageError."""
        conversation_id = message.conversation_id
        if change is not None and change.create:
            self.db.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, members, head_seq, created_at_ms,"
                " last_activity_ms, name) VALUES (?, ?, '[]', 0, ?, ?, ?)",
                (conversation_id, GROUP, message.sent_at_ms, message.sent_at_ms,
                 change.name or ""))
        try:
            head = self.conv_head(conversation_id)
        except ConversationNotFound:  # its creation was never applied here
            raise StorageError(f"{conversation_id}: replicated seq {message.seq} of a group"
                               " this store never had") from None
        if message.seq <= head:
            if supersede and change is None:  # a change superseded: not replayed (a limit)
                self._supersede(message)
            return []
        if message.seq != head + 1:
            raise StorageError(f"{conversation_id}: replicated seq {message.seq}"
                               f" after head {head} would leave a hole")
        before = set(social.member_ids(self.db, conversation_id))
        after = before
        affected: set[str] = set()
        if change is not None:
            social.apply_change(self.db, conversation_id, change, message.seq,
                                message.sent_at_ms)
            after = set(social.member_ids(self.db, conversation_id))
            affected = {u for u, _ in change.add} | set(change.remove)
        large = large_above is not None and len(after) > large_above
        return self.apply_replicated(message, sorted(affected if large else before | after))

    def fan_out(self, conversation_id: str, entries: Sequence[tuple[int, Sequence[str]]],
                fresh: Collection[int] = frozenset()) -> list[InboxItem]:
        """Storage.fan_out: each (seq, user) entry found, or added."""
        items = []
        for seq, users in sorted(entries, key=lambda entry: entry[0]):
            row = self.db.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE"
                                  " conversation_id = ? AND seq = ?",
                                  (conversation_id, seq)).fetchone()
            if row is None:  # never taken for "done": the caller retries, or gives up loudly
                raise StorageUnavailable(f"{conversation_id}#{seq} is not stored")
            message = message_from_row(row)
            # regions linked: only the users homed here (the append that owed these
            # noted the others' as owed; their homes' logs bring their entries)
            for user_id in [u for u in dict.fromkeys(users) if self.homed_here(u)]:
                # a range of the user's newest rows (primary key): an entry
                # written before lies near the head; one older than that is
                # written again (a duplicate entry, which clients drop)
                found = None if seq in fresh else self.db.execute(
                    "SELECT inbox_seq FROM inbox WHERE user_id = ? AND inbox_seq > ?"
                    " AND conversation_id = ? AND seq = ?",
                    (user_id, self.inbox_head(user_id) - FIND_BACK, conversation_id,
                     seq)).fetchone()
                items.append(InboxItem(user_id, int(found[0]), message) if found is not None
                             else self.add_entry(user_id, message))
        return items


    def apply_membership(self, conversation_id: str, change: MembershipChange,
                         event: SendRequest, now_ms: int,
                         recipients: Sequence[str] | None,
                         inboxes: Collection[str] | None = None) -> AppendResult:
        db = self.db
        self.check_fence(event)
        if change.create:
            db.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, members, head_seq, created_at_ms,"
                " last_activity_ms, name) VALUES (?, ?, '[]', 0, ?, ?, ?)",
                (conversation_id, GROUP, now_ms, now_ms, change.name or ""))
        head = self.conv_head(conversation_id)  # raises ConversationNotFound
        earlier = self.stored_before(event)
        if earlier is not None:
            return AppendResult(message=earlier, duplicate=True)
        before = set(social.member_ids(db, conversation_id))
        social.apply_change(db, conversation_id, change, head + 1, now_ms)
        after = set(social.member_ids(db, conversation_id))
        return self.append(event, sorted(before | after) if recipients is None else recipients,
                           inboxes)


class AppendJob:
    """The writer job of one append: only these may run with their rows queued
    (any other job of the batch sees the rows written first). `after`: the job of
    the device's previous pipelined send into the conversation (storage/pipelining.py),
    which runs before this one; when its latest attempt did not store it, this one is
    refused unstored. `failed`: this job's latest attempt did not store it (the writer
    thread alone reads and writes it)."""

    __slots__ = ("after", "failed", "inboxes", "recipients", "request")

    def __init__(self, request: SendRequest, recipients: Sequence[str],
                 inboxes: Collection[str] | None = None,
                 after: AppendJob | None = None) -> None:
        self.request = request
        self.recipients = recipients
        self.inboxes = inboxes
        self.after = after
        self.failed = False

    def __call__(self, writer: Writer) -> AppendResult:
        after = self.after
        if after is not None and after.failed:
            self.failed = True
            raise StorageUnavailable(f"cid {after.request.cid} of this device was not stored:"
                                     " resend from it")
        self.failed = True  # until it returns
        result = writer.append(self.request, self.recipients, self.inboxes)
        self.failed = False
        return result


def mark_failed(batch: Sequence[Job], results: Sequence[tuple[bool, Any]]) -> None:
    """The appends a batch did not store, as their pipelined successors will see them
    (a commit that failed after the job returned included)."""
    for (fn, _, _, _), (ok, _) in zip(batch, results, strict=True):
        if not ok and type(fn) is AppendJob:
            fn.failed = True


# a write, its future and loop, and when it was queued (time.perf_counter())
Job = tuple[Callable[[Writer], Any], asyncio.Future[Any], asyncio.AbstractEventLoop, float]



def inbox_head(db: sqlite3.Connection, user_id: str) -> int:
    """The user's newest inbox_seq (0: none). Entries are never deleted, so it is the
    head; read from the primary key's last entry for the user, it costs no row written
    per entry (schema 3 dropped the inbox_heads table's upsert per recipient)."""
    row = db.execute("SELECT max(inbox_seq) FROM inbox WHERE user_id = ?", (user_id,)).fetchone()
    return int(row[0] or 0)


def _exists(db: sqlite3.Connection, table: str, key: str, key_value: str, seq_column: str,
            seq: int) -> bool:
    return db.execute(f"SELECT 1 FROM {table} WHERE {key} = ? AND {seq_column} = ?",
                      (key_value, seq)).fetchone() is not None


def damaged(path: Path, finding: str) -> str:
    return (f"SQLite database {path} is damaged ({finding}): refusing to serve it;"
            " restore a backup (chatplane storage restore, docs/operations.md)")


def check_integrity(db: sqlite3.Connection, path: Path) -> None:
    """PRAGMA quick_check (every page and index entry is well formed, not that
    indexes match their tables): a damaged store is refused at start rather
    than served as UNAVAILABLE to every request."""
    rows = db.execute("PRAGMA quick_check").fetchall()
    if [tuple(r) for r in rows] != [("ok",)]:
        findings = [line for row in rows for line in str(row[0]).splitlines()
                    if line and not line.startswith("***")] or ["not ok"]
        more = f" and {len(findings) - 1} more findings" if len(findings) > 1 else ""
        raise StorageError(damaged(path, f"quick_check: {findings[0]}{more}"))


def rollback(writer: Writer) -> None:
    """End whatever transaction a failure left open; its cached heads go too."""
    try:
        if writer.db.in_transaction:
            writer.db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
    writer.discard()


def corrupt(exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in str(exc)


def store_fault(exc: BaseException) -> bool:
    """A failure of the store itself, which running the jobs one by one cannot cure."""
    return isinstance(exc, sqlite3.OperationalError) or corrupt(exc)


def failure(exc: BaseException) -> StorageError:
    """What the caller of a failed write gets: its own StorageError as is; a
    store fault as StorageUnavailable (retriable); anything else (a value
    SQLite cannot hold, a bug) as a StorageError naming it."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, sqlite3.Error) and store_fault(exc):
        return StorageUnavailable(f"sqlite write failed: {exc}")
    return StorageError(f"write refused: {type(exc).__name__}: {exc}")


def log_head(db: sqlite3.Connection) -> int:
    """The replicated log's newest position: AUTOINCREMENT's counter, which a trim
    (deleting every entry) does not lower, unlike max(lsn)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'region_log'").fetchone()
    return 0 if row is None else int(row[0])


def positioned(writer: Writer, results: list[tuple[bool, Any]]) -> list[tuple[bool, Any]]:
    """The batch's append results with the log head of their transaction (read once
    per batch, before COMMIT): a homed message's entry was written by the trigger in
    this transaction, so its position is at or below it, and the send's `sync` ack
    waits for it without a read of its own."""
    if not any(ok and type(value) is AppendResult for ok, value in results):
        return results
    head = log_head(writer.db)
    if not head:  # no log (regions not linked): every position stays 0, as appended
        return results
    return [(ok, dataclasses.replace(value, log_position=head))
            if ok and type(value) is AppendResult else (ok, value) for ok, value in results]


def settle_batch(batch: Sequence[Job], results: Sequence[tuple[bool, Any]]) -> None:
    """Hand each job its result on its loop: one call into each loop per
    batch (a wake-up of the loop each), not one per job."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_, future, loop, _), (ok, value) in zip(batch, results, strict=True):
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, items)
        except RuntimeError:  # that loop is closed: nobody waits any more
            pass


def _settle_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        settle(future, ok, value)


def settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
