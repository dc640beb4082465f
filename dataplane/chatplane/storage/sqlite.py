"""Embedded storage on SQLite: the default backend of `chatplane up`.

One writer thread owns every write. Appends queue up while a transaction
commits and the next transaction takes them all at once (group commit), so
durability costs one fsync per batch, not per message. Because the writer is
the only one, it keeps conversation and inbox heads in memory: they are exact,
and they are reloaded from the tables after any failed transaction.

Reads run on a second connection in their own thread (WAL lets them proceed
while the writer commits).
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from chatplane.metrics import Histogram
from chatplane.storage import sqlite_social as social
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    AppendResult,
    Conversation,
    ConversationNotFound,
    ConversationSummary,
    Fenced,
    InboxItem,
    Member,
    MembershipChange,
    Relation,
    SendRequest,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    direct_conversation_id,
    events_conversation_id,
)

T = TypeVar("T")

SCHEMA_VERSION = 2
MAX_BATCH = 512

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    members TEXT NOT NULL,
    head_seq INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    cid INTEGER NOT NULL,
    text TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_cid
    ON messages (conversation_id, sender, sender_device, cid);
CREATE TABLE IF NOT EXISTS inbox (
    user_id TEXT NOT NULL,
    inbox_seq INTEGER NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, inbox_seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox_heads (user_id TEXT PRIMARY KEY, head INTEGER NOT NULL);
-- The sequencing lease of a conversation (docs/architecture.md, "Ownership"):
-- a fenced append runs only while its epoch is the row's.
CREATE TABLE IF NOT EXISTS leases (
    conversation_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
"""

MESSAGE_COLUMNS = (
    "conversation_id, seq, message_id, sender, sender_device, cid, text, sent_at_ms,"
    " payload, content_type"
)


def _message(row: Sequence[Any]) -> StoredMessage:
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


def _conversation(db: sqlite3.Connection, row: Sequence[Any]) -> Conversation:
    extra = json.loads(row[5])
    if row[6]:
        extra["name"] = row[6]
    return Conversation(
        conversation_id=row[0],
        kind=row[1],
        members=social.member_ids(db, row[0]),
        head_seq=row[3],
        created_at_ms=row[4],
        extra=extra,
    )


class _Writer:
    """State owned by the writer thread only."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.conv_heads: dict[str, int] = {}
        self.inbox_heads: dict[str, int] = {}
        self.dirty_convs: dict[str, tuple[int, int]] = {}
        self.dirty_reads: dict[tuple[str, str], int] = {}
        self.dirty_inbox: dict[str, int] = {}

    def forget(self) -> None:
        """Drop cached heads (they are re-read), after writing the pending ones:
        the transaction still holds them."""
        self.flush_heads()
        self.conv_heads.clear()
        self.inbox_heads.clear()

    def flush_heads(self) -> None:
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
        if self.dirty_inbox:
            db.executemany("INSERT INTO inbox_heads (user_id, head) VALUES (?, ?)"
                           " ON CONFLICT (user_id) DO UPDATE SET head = excluded.head",
                           list(self.dirty_inbox.items()))
            self.dirty_inbox.clear()

    def discard(self) -> None:
        """The transaction rolled back: nothing pending is true any more."""
        self.dirty_convs.clear()
        self.dirty_reads.clear()
        self.dirty_inbox.clear()
        self.conv_heads.clear()
        self.inbox_heads.clear()

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
            row = self.db.execute(
                "SELECT head FROM inbox_heads WHERE user_id = ?", (user_id,)
            ).fetchone()
            head = self.inbox_heads[user_id] = row[0] if row else 0
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

    def append(self, request: SendRequest, recipients: Sequence[str]) -> AppendResult:
        db = self.db
        self.check_fence(request)
        head = self.conv_head(request.conversation_id)
        row = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND sender = ?"
            " AND sender_device = ? AND cid = ?",
            (request.conversation_id, request.sender, request.sender_device, request.cid),
        ).fetchone()
        if row is not None:
            return AppendResult(message=_message(row), duplicate=True)
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
        db.execute(
            f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message.conversation_id, seq, message.message_id, message.sender,
                message.sender_device, message.cid, message.text, message.sent_at_ms,
                message.payload, message.content_type,
            ),
        )
        # heads, activity and the sender's read position are written once per
        # batch (flush_heads), not once per message
        self.dirty_convs[request.conversation_id] = (seq, request.sent_at_ms)
        # one's own message is read by definition: it never counts as unread
        self.dirty_reads[(request.sender, request.conversation_id)] = seq
        self.conv_heads[request.conversation_id] = seq
        items = []
        for user_id in recipients:
            inbox_seq = self.inbox_head(user_id) + 1
            db.execute(
                "INSERT INTO inbox (user_id, inbox_seq, conversation_id, seq) VALUES (?, ?, ?, ?)",
                (user_id, inbox_seq, request.conversation_id, seq),
            )
            self.dirty_inbox[user_id] = inbox_seq
            self.inbox_heads[user_id] = inbox_seq
            items.append(InboxItem(user_id=user_id, inbox_seq=inbox_seq, message=message))
        return AppendResult(message=message, duplicate=False, inbox=tuple(items))


    def apply_membership(self, conversation_id: str, change: MembershipChange,
                         event: SendRequest, now_ms: int,
                         recipients: Sequence[str] | None) -> AppendResult:
        db = self.db
        self.check_fence(event)
        if change.create:
            db.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, members, head_seq, created_at_ms,"
                " last_activity_ms, name) VALUES (?, ?, '[]', 0, ?, ?, ?)",
                (conversation_id, GROUP, now_ms, now_ms, change.name or ""))
        head = self.conv_head(conversation_id)  # raises ConversationNotFound
        row = db.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND sender = ?"
            " AND sender_device = ? AND cid = ?",
            (conversation_id, event.sender, event.sender_device, event.cid)).fetchone()
        if row is not None:
            return AppendResult(message=_message(row), duplicate=True)
        before = set(social.member_ids(db, conversation_id))
        social.apply_change(db, conversation_id, change, head + 1, now_ms)
        after = set(social.member_ids(db, conversation_id))
        return self.append(event, sorted(before | after) if recipients is None else recipients)


# a write, its future and loop, and when it was queued (time.perf_counter())
_Job = tuple[Callable[[_Writer], Any], asyncio.Future[Any], asyncio.AbstractEventLoop, float]


class _SocialMethods:
    """The social half of the Storage interface (tables in sqlite_social)."""

    _write: Any
    _read: Any

    async def ensure_events(self, user_id: str, now_ms: int) -> Conversation:
        conversation_id = events_conversation_id(user_id)

        def create(writer: _Writer) -> Conversation:
            created = writer.db.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, members, head_seq, created_at_ms,"
                " last_activity_ms) VALUES (?, ?, '[]', 0, ?, ?)",
                (conversation_id, EVENTS, now_ms, now_ms)).rowcount
            if created:
                social.add_member_rows(writer.db, conversation_id, user_id, "member", 0)
            row = writer.db.execute("SELECT created_at_ms FROM conversations WHERE id = ?",
                                    (conversation_id,)).fetchone()
            return Conversation(conversation_id, EVENTS, (user_id,), writer.conv_head(
                conversation_id), int(row[0]))

        result: Conversation = await self._write(create)
        return result

    async def apply_membership(self, conversation_id: str, change: MembershipChange,
                               event: SendRequest,
                               recipients: Sequence[str] | None = None) -> AppendResult:
        chosen = None if recipients is None else tuple(recipients)
        result: AppendResult = await self._write(
            lambda writer: writer.apply_membership(conversation_id, change, event,
                                                   event.sent_at_ms, chosen))
        return result

    async def members(self, conversation_id: str) -> list[Member]:
        result: list[Member] = await self._read(lambda db: social.members(db, conversation_id))
        return result

    async def mark_read(self, user_id: str, conversation_id: str, seq: int,
                        *, dry_run: bool = False) -> tuple[int, int]:
        def advance(writer: _Writer) -> tuple[int, int]:
            try:  # the writer's head: the table's may be pending in this batch
                head = writer.conv_head(conversation_id)
            except ConversationNotFound:
                return 0, 0
            writer.flush_heads()  # pending own-send reads first: max() keeps the higher
            return social.advance_read(writer.db, user_id, conversation_id, seq, head, dry_run)

        result: tuple[int, int] = await self._write(advance)
        return result

    async def read_positions(self, conversation_id: str) -> dict[str, int]:
        result: dict[str, int] = await self._read(
            lambda db: social.read_positions(db, conversation_id))
        return result

    async def conversations_of(self, user_id: str, limit: int,
                               before: tuple[int, str] | None = None) -> list[ConversationSummary]:
        result: list[ConversationSummary] = await self._read(
            lambda db: social.conversations_of(db, user_id, limit, before, MESSAGE_COLUMNS,
                                               _message))
        return result

    async def membership_span(self, user_id: str, conversation_id: str) -> tuple[int, int] | None:
        def read(db: sqlite3.Connection) -> tuple[int, int] | None:
            row = db.execute("SELECT joined_seq, left_seq FROM user_conversations WHERE user_id = ?"
                             " AND conversation_id = ?", (user_id, conversation_id)).fetchone()
            return (int(row[0]), int(row[1])) if row else None

        result: tuple[int, int] | None = await self._read(read)
        return result

    async def large_groups_of(self, user_id: str, threshold: int) -> list[tuple[str, int, int]]:
        def read(db: sqlite3.Connection) -> list[tuple[str, int, int]]:
            return [(r[0], int(r[1]), int(r[2])) for r in db.execute(
                "SELECT c.id, c.head_seq, uc.joined_seq FROM user_conversations uc"
                " JOIN conversations c ON c.id = uc.conversation_id"
                " WHERE uc.user_id = ? AND uc.left_seq = 0 AND c.kind = ?"
                # "more than threshold members", stepping over at most
                # threshold + 1 index entries (a COUNT read all 10,000 of a big
                # group at every sync: the slow part of a login storm into one)
                " AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = c.id"
                " LIMIT 1 OFFSET ?)",
                (user_id, GROUP, threshold))]

        result: list[tuple[str, int, int]] = await self._read(read)
        return result

    async def relation(self, user_id: str, other: str) -> Relation:
        result: Relation = await self._read(lambda db: social.relation(db, user_id, other))
        return result

    async def put_relations(self, changes: Sequence[tuple[str, str, Relation]]) -> None:
        rows = list(changes)
        await self._write(lambda writer: social.put_relations(writer.db, rows))

    async def relations(self, user_id: str) -> list[tuple[str, Relation]]:
        result: list[tuple[str, Relation]] = await self._read(
            lambda db: social.relations(db, user_id))
        return result

    async def put_invitation(self, conversation_id: str, user_id: str, inviter: str,
                             now_ms: int) -> None:
        await self._write(lambda writer: writer.db.execute(
            "INSERT OR REPLACE INTO invitations (conversation_id, user_id, inviter, at_ms)"
            " VALUES (?, ?, ?, ?)", (conversation_id, user_id, inviter, now_ms)))

    async def take_invitation(self, conversation_id: str, user_id: str) -> str | None:
        def take(writer: _Writer) -> str | None:
            row = writer.db.execute(
                "DELETE FROM invitations WHERE conversation_id = ? AND user_id = ? RETURNING inviter",
                (conversation_id, user_id)).fetchone()
            return str(row[0]) if row else None

        result: str | None = await self._write(take)
        return result

    async def invitations(self, user_id: str) -> list[tuple[str, str, int]]:
        rows: list[tuple[str, str, int]] = await self._read(lambda db: [
            (str(c), str(i), int(at)) for c, i, at in db.execute(
                "SELECT conversation_id, inviter, at_ms FROM invitations WHERE user_id = ?"
                " ORDER BY at_ms DESC, conversation_id", (user_id,))])
        return rows


class SqliteStorage(_SocialMethods):
    """The embedded backend. `synchronous` is SQLite's PRAGMA: FULL survives
    power loss; NORMAL survives a process crash (kill -9) and is faster."""

    name = "sqlite"
    store_id = ""  # set by open()

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", shared: bool = False) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StorageError(f"sqlite synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        # shared: other processes write this file too (`chatplane cluster up`
        # with several im processes): heads are re-read in every transaction,
        # which holds SQLite's write lock, so they stay exact.
        self.shared = shared
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        # filled by the writer thread, read by /metrics on the loop: under a lock,
        # so a scrape never sees a histogram half updated
        self._metrics_lock = threading.Lock()
        self.write_wait_ms = Histogram(
            "chatplane_storage_write_wait_ms",
            "a write queued until its group commit began (SQLite writer thread)")
        self.commit_ms = Histogram(
            "chatplane_storage_commit_ms",
            "a group commit: its statements and the fsync'd COMMIT (SQLite writer thread)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            writer_db = self._connect()
            writer_db.executescript(SCHEMA)
            writer_db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            row = writer_db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {version}; this chatplane knows up to"
                    f" {SCHEMA_VERSION}: upgrade chatplane"
                )
            writer_db.execute("BEGIN IMMEDIATE")
            social.migrate_to_v2(writer_db)  # idempotent: also completes a fresh v2 database
            writer_db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                              (str(SCHEMA_VERSION),))
            writer_db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)",
                              (uuid.uuid4().hex,))
            self.store_id = writer_db.execute(
                "SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
            writer_db.execute("COMMIT")
            self._reader = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._run_writer, args=(writer_db,), name="sqlite-writer", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        if self._reader is not None:
            reader = self._reader
            self._reader = None
            await asyncio.get_running_loop().run_in_executor(self._read_pool, reader.close)
        self._read_pool.shutdown(wait=False)

    # -- the writer thread -------------------------------------------------

    def _run_writer(self, db: sqlite3.Connection) -> None:
        writer = _Writer(db)
        while True:
            first = self._jobs.get()
            if first is None:
                db.close()
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(job)
            self._commit_batch(writer, batch)

    def _commit_batch(self, writer: _Writer, batch: list[_Job]) -> None:
        began = time.perf_counter()
        results: list[tuple[bool, Any]] = []
        try:
            writer.db.execute("BEGIN IMMEDIATE")
            if self.shared:
                writer.forget()
            for fn, _, _, _ in batch:
                writer.db.execute("SAVEPOINT job")
                try:
                    results.append((True, fn(writer)))
                    writer.db.execute("RELEASE job")
                except StorageError as exc:  # this job's own failure: the rest go on
                    writer.db.execute("ROLLBACK TO job")
                    writer.db.execute("RELEASE job")
                    writer.forget()
                    results.append((False, exc))
            writer.flush_heads()
            writer.db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                writer.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            writer.discard()
            failure = StorageUnavailable(f"sqlite write failed: {exc}")
            results = [(False, failure)] * len(batch)
        done = time.perf_counter()
        with self._metrics_lock:
            for _, _, _, queued in batch:
                self.write_wait_ms.observe((began - queued) * 1000)
            self.commit_ms.observe((done - began) * 1000)
        for (_, future, loop, _), (ok, value) in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, ok, value)

    def metrics_text(self) -> str:
        with self._metrics_lock:
            return "\n".join(self.write_wait_ms.render() + self.commit_ms.render()) + "\n"

    async def _write(self, fn: Callable[[_Writer], T]) -> T:
        if self._thread is None:
            raise StorageUnavailable("storage is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop, time.perf_counter()))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader = self._reader
        if reader is None:
            raise StorageUnavailable("storage is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._read_pool, fn, reader)
        except sqlite3.Error as exc:
            raise StorageUnavailable(f"sqlite read failed: {exc}") from exc

    # -- the Storage interface ---------------------------------------------

    async def ensure_direct(self, a: str, b: str, now_ms: int) -> Conversation:
        conversation_id = direct_conversation_id(a, b)
        members = json.dumps(sorted({a, b}))

        def create(writer: _Writer) -> None:
            created = writer.db.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, members, head_seq, created_at_ms,"
                " last_activity_ms) VALUES (?, ?, ?, 0, ?, ?)",
                (conversation_id, DIRECT, members, now_ms, now_ms),
            ).rowcount
            if created:
                for user in sorted({a, b}):
                    social.add_member_rows(writer.db, conversation_id, user, "member", 0)

        existing = await self.conversation(conversation_id)
        if existing is not None:
            return existing
        await self._write(create)
        created = await self.conversation(conversation_id)
        assert created is not None
        return created

    async def conversation(self, conversation_id: str) -> Conversation | None:
        def read(db: sqlite3.Connection) -> Conversation | None:
            row = db.execute(
                "SELECT id, kind, members, head_seq, created_at_ms, extra, name FROM conversations"
                " WHERE id = ?",
                (conversation_id,),
            ).fetchone()
            return _conversation(db, row) if row else None

        return await self._read(read)

    async def acquire(self, conversation_id: str, owner: str) -> int:
        epoch: int = await self._write(lambda writer: writer.acquire(conversation_id, owner))
        return epoch

    async def append(self, request: SendRequest, recipients: Sequence[str]) -> AppendResult:
        recipients = tuple(recipients)
        return await self._write(lambda writer: writer.append(request, recipients))

    async def inbox(self, user_id: str, after_seq: int, limit: int) -> list[InboxItem]:
        columns = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))

        def read(db: sqlite3.Connection) -> list[InboxItem]:
            rows = db.execute(
                f"SELECT i.inbox_seq, {columns} FROM inbox i JOIN messages m"
                " ON m.conversation_id = i.conversation_id AND m.seq = i.seq"
                " WHERE i.user_id = ? AND i.inbox_seq > ? ORDER BY i.inbox_seq LIMIT ?",
                (user_id, after_seq, limit),
            ).fetchall()
            return [InboxItem(user_id, row[0], _message(row[1:])) for row in rows]

        return await self._read(read)

    async def inbox_head(self, user_id: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT head FROM inbox_heads WHERE user_id = ?", (user_id,)).fetchone()
            return int(row[0]) if row else 0

        return await self._read(read)

    async def history(
        self,
        conversation_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> list[StoredMessage]:
        upper = before_seq if before_seq is not None else 2**63 - 1

        def read(db: sqlite3.Connection) -> list[StoredMessage]:
            if after_seq is not None:
                rows = db.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
                    " AND seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                    (conversation_id, after_seq, upper, limit),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"
                    " AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (conversation_id, upper, limit),
                ).fetchall()
                rows.reverse()
            return [_message(row) for row in rows]

        return await self._read(read)

    async def put_user(self, user_id: str, display_name: str, now_ms: int) -> None:
        def write(writer: _Writer) -> None:
            writer.db.execute(
                "INSERT INTO users (id, display_name, created_at_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name",
                (user_id, display_name, now_ms),
            )

        await self._write(write)

    async def get_user(self, user_id: str) -> dict[str, str] | None:
        def read(db: sqlite3.Connection) -> dict[str, str] | None:
            row = db.execute(
                "SELECT id, display_name, created_at_ms FROM users WHERE id = ?", (user_id,)
            ).fetchone()
            if row is None:
                return None
            return {"user_id": row[0], "display_name": row[1], "created_at_ms": str(row[2])}

        return await self._read(read)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
