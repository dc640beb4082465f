"""Embedded storage on SQLite: the default backend of `chatplane up`.

One writer thread owns every write. Appends queue up while a transaction
commits and the next transaction takes them all at once (group commit), so
durability costs one fsync per batch, not per message. Because the writer is
the only one, it keeps conversation and inbox heads in memory: they are exact,
and they are reloaded from the tables after any failed transaction.

Reads run on a second connection in their own thread (WAL lets them proceed
while the writer commits).

The writer survives whatever a write raises: each write runs in a savepoint
and fails alone; a transaction that fails as a whole is rolled back and its
writes run again one by one, unless the store itself is at fault (busy, I/O,
full, corrupt: all fail, retriable). `health()` says when the writer stopped,
is wedged on a write older than `wedge_s`, or met a damaged file; /readyz
shows it (chatplane.supervision). The rules of a failure are in
sqlite_writer.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric

from chatplane import metrics, tracing
from chatplane.metrics import Histogram
from chatplane.storage import sqlite_social as social
from chatplane.storage.base import (
    CONVERSATION_HOME,
    DIRECT,
    EVENTS,
    GROUP,
    USER_HOME,
    AppendResult,
    Conversation,
    ConversationNotFound,
    ConversationSummary,
    Home,
    InboxItem,
    LogBlocked,
    LogEntry,
    LogExtent,
    LogTrimmed,
    Member,
    MembershipChange,
    NotStoredYet,
    Relation,
    Revocation,
    SendRequest,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    direct_conversation_id,
    events_conversation_id,
    home_replaces,
)
from chatplane.storage.pipelining import pipelined
from chatplane.storage.sqlite_moves import _UserMoveMethods
from chatplane.storage.sqlite_writer import (
    MESSAGE_COLUMNS,
    AppendJob,
    Job,
    Writer,
    check_integrity,
    corrupt,
    damaged,
    failure,
    log_head,
    mark_failed,
    message_from_row,
    positioned,
    rollback,
    settle_batch,
    store_fault,
)
from chatplane.storage.sqlite_writer import (
    inbox_head as sqlite_inbox_head,
)

T = TypeVar("T")
log = logging.getLogger("chatplane.storage.sqlite")

# 3: a user's inbox head is its newest inbox row (the inbox_heads table, one row
# rewritten per recipient of every message, is gone); a build that knows 2 would
# read a stale head from it, so it refuses a store at 3
SCHEMA_VERSION = 3
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
-- The sequencing lease of a conversation (docs/architecture.md, "Ownership"):
-- a fenced append runs only while its epoch is the row's.
CREATE TABLE IF NOT EXISTS leases (
    conversation_id TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL
) WITHOUT ROWID;
-- Messages whose inbox entries other instances still owe (a cluster's one
-- writer per inbox, im/inboxes.py), until `fanned_out`: the conversation's
-- next owner finishes them. New without a version bump, like revocations.
CREATE TABLE IF NOT EXISTS fanouts (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    users TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
-- Token revocations (auth.py): '*' matches every user or device. New in 2
-- without a version bump: CREATE IF NOT EXISTS runs at every open.
CREATE TABLE IF NOT EXISTS revocations (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    before_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
-- Home regions (docs/architecture.md, "Regions"): who sequences a conversation
-- ('conversation') or a user's inbox ('user'), changed by offer_home only.
CREATE TABLE IF NOT EXISTS homes (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    region TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    confirmed INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
-- The replicated log (ReplicatedLog): every message stored in a conversation that
-- has a home row, in commit order (the trigger runs in the append's transaction).
-- Peers read the entries homed here; `region_cursors` is where this store's reading
-- of each peer's log stands, moved in the transaction that applies it.
CREATE TABLE IF NOT EXISTS region_log (
    lsn INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS region_log_messages AFTER INSERT ON messages
    WHEN EXISTS (SELECT 1 FROM homes WHERE kind = 'conversation' AND key = new.conversation_id)
    BEGIN
        INSERT INTO region_log (conversation_id, seq) VALUES (new.conversation_id, new.seq);
    END;
CREATE TABLE IF NOT EXISTS region_cursors (
    peer TEXT PRIMARY KEY,
    lsn INTEGER NOT NULL
) WITHOUT ROWID;
-- User homes: inbox entries this store did not write because the user is homed in
-- another region, until that home's entry arrives (apply_log); a takeover of the
-- user writes the ones still owed (the lost home wrote them and never shipped them).
CREATE TABLE IF NOT EXISTS inbox_owed (
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation_id, seq)
) WITHOUT ROWID;
-- How far the log was trimmed (trim_log: entries every peer applied): one row.
CREATE TABLE IF NOT EXISTS region_log_trimmed (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    lsn INTEGER NOT NULL
);
"""

# Run after the columns exist (`_add_log_columns`): inbox entries of users that have a
# home row join the log too (user homes, docs/architecture.md "Regions"), as
# (user_id, inbox_seq) naming (conversation_id, seq); a message's entry has user_id ''.
INBOX_LOG = """
CREATE TRIGGER IF NOT EXISTS region_log_inbox AFTER INSERT ON inbox
    WHEN EXISTS (SELECT 1 FROM homes WHERE kind = 'user' AND key = new.user_id)
    BEGIN
        INSERT INTO region_log (conversation_id, seq, user_id, inbox_seq)
            VALUES (new.conversation_id, new.seq, new.user_id, new.inbox_seq);
    END;
"""


def _add_log_columns(db: sqlite3.Connection) -> None:
    """The log's inbox columns, new without a version bump (a store made before them)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(region_log)")}
    if "user_id" not in columns:
        db.execute("ALTER TABLE region_log ADD COLUMN user_id TEXT NOT NULL DEFAULT ''")
    if "inbox_seq" not in columns:
        db.execute("ALTER TABLE region_log ADD COLUMN inbox_seq INTEGER NOT NULL DEFAULT 0")

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


class _SocialMethods:
    """The social half of the Storage interface (tables in sqlite_social)."""

    _write: Any
    _read: Any

    async def ensure_events(self, user_id: str, now_ms: int) -> Conversation:
        conversation_id = events_conversation_id(user_id)

        def create(writer: Writer) -> Conversation:
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
                               recipients: Sequence[str] | None = None,
                               inboxes: Collection[str] | None = None) -> AppendResult:
        chosen = None if recipients is None else tuple(recipients)
        local = None if inboxes is None else frozenset(inboxes)
        result: AppendResult = await self._write(
            lambda writer: writer.apply_membership(conversation_id, change, event,
                                                   event.sent_at_ms, chosen, local))
        return result

    async def members(self, conversation_id: str) -> list[Member]:
        result: list[Member] = await self._read(lambda db: social.members(db, conversation_id))
        return result

    async def mark_read(self, user_id: str, conversation_id: str, seq: int,
                        *, dry_run: bool = False) -> tuple[int, int]:
        def advance(writer: Writer) -> tuple[int, int]:
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
                                               message_from_row))
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

    # -- friends and reads across regions (regions/social.py `SocialStore`) ------

    async def record_relations(self, request: SendRequest,
                               changes: Sequence[tuple[str, str, Relation]]) -> AppendResult:
        rows = list(changes)

        def record(writer: Writer) -> AppendResult:
            social.ensure_relations_log(writer.db, request.conversation_id, request.sent_at_ms)
            result = writer.append(request, ())
            if not result.duplicate:  # the rows with their record: one transaction
                social.put_relations(writer.db, rows)
            return result

        result: AppendResult = await self._write(record)
        return result

    async def ensure_relations_log(self, conversation_id: str, now_ms: int) -> None:
        await self._write(lambda writer: social.ensure_relations_log(writer.db, conversation_id,
                                                                     now_ms))

    async def merge_reads(self, reads: Sequence[tuple[str, str, int]]) -> None:
        rows = list(reads)

        def merge(writer: Writer) -> None:
            writer.flush_heads()  # pending own-send positions first: max() keeps the higher
            social.merge_reads(writer.db, rows)

        if rows:
            await self._write(merge)

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
        def take(writer: Writer) -> str | None:
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


class SqliteStorage(_SocialMethods, _UserMoveMethods):
    """The embedded backend. `synchronous` is SQLite's PRAGMA: FULL survives
    power loss; NORMAL survives a process crash (kill -9) and is faster."""

    name = "sqlite"
    store_id = ""  # set by open()
    # the region served (ReplicatedLog.region): inbox entries only for users homed in it
    region = ""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", shared: bool = False,
                 wedge_s: float = 10.0) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise StorageError(f"sqlite synchronous must be FULL, NORMAL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self._span_target = self.path.name  # of the storage spans (tracing.db_span)
        self.synchronous = synchronous.upper()
        # shared: other processes write this file too (`chatplane cluster up`
        # with several im processes): heads are re-read in every transaction,
        # which holds SQLite's write lock, so they stay exact.
        self.shared = shared
        # the writes of one loop turn go to the writer thread together (one
        # wake-up of the thread per turn, not one per write)
        self._jobs: queue.SimpleQueue[list[Job] | None] = queue.SimpleQueue()
        self._turn: list[Job] = []
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        # filled by the writer thread, read by /metrics on the loop: under a lock,
        # so a scrape never sees a histogram half updated
        self._metrics_lock = threading.Lock()
        self.write_wait = Histogram(
            "chatplane_storage_write_wait_seconds",
            "a write queued until its group commit began (SQLite writer thread)")
        self.commit = Histogram(
            "chatplane_storage_commit_seconds",
            "a group commit: its statements and the fsync'd COMMIT (SQLite writer thread)")
        self.writer_errors = 0  # transactions or jobs that failed with an exception
        self.oldest_in_batch = 0.0  # perf_counter() its oldest job was queued; 0: idle
        self.corruption = ""  # the first "malformed" error seen (health())
        self.wedge_s = wedge_s

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
            check_integrity(writer_db, self.path)
            writer_db.executescript(SCHEMA)
            _add_log_columns(writer_db)
            writer_db.executescript(INBOX_LOG)
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
            writer_db.execute("DROP TABLE IF EXISTS inbox_heads")  # v3: heads from the inbox
            writer_db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                              (str(SCHEMA_VERSION),))
            writer_db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)",
                              (uuid.uuid4().hex,))
            self.store_id = writer_db.execute(
                "SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
            writer_db.execute("COMMIT")
            self._reader = self._connect()
        except (sqlite3.Error, OSError) as exc:
            if corrupt(exc):
                raise StorageError(damaged(self.path, str(exc))) from exc
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._run_writer, args=(writer_db,), name="sqlite-writer", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._submit()  # this turn's writes first
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
        writer = Writer(db, lambda: self.region)
        while True:
            first = self._jobs.get()
            if first is None:
                db.close()
                return
            batch = first
            while len(batch) < MAX_BATCH:
                try:
                    jobs = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if jobs is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.extend(jobs)
            self.oldest_in_batch = batch[0][3]  # what the wedge check (health) times
            try:
                self._commit_batch(writer, batch)
            except Exception as exc:
                log.exception("sqlite writer: batch of %d failed", len(batch))
                self.writer_errors += 1
                rollback(writer)
                self.oldest_in_batch = 0.0
                failure = StorageUnavailable(f"sqlite write failed: {type(exc).__name__}: {exc}")
                mark_failed(batch, [(False, failure)] * len(batch))
                settle_batch(batch, [(False, failure)] * len(batch))

    def _commit_batch(self, writer: Writer, batch: list[Job]) -> None:
        """One transaction for the batch. First the fast path: no savepoints,
        appends queue their rows and one `executemany` per table writes them.
        If any job raises there, the transaction is rolled back and the batch
        runs again with a savepoint per job, so a job that raises (anything:
        a StorageError, an int SQLite cannot hold, a bug) fails alone. When the
        transaction itself fails, each job of a batch of several is run again
        in its own transaction, so one bad job cannot fail the good ones; only
        a fault of the store itself (busy, I/O, disk full, corrupt:
        sqlite3.OperationalError, DatabaseError) fails all."""
        began = time.perf_counter()
        try:
            results = self._fast_transaction(writer, batch)
            if results is None:
                results = self._transaction(writer, batch)
        except Exception as exc:
            rollback(writer)
            self._note(exc)
            if len(batch) > 1 and not store_fault(exc):
                results = [self._alone(writer, job) for job in batch]
            else:
                results = [(False, failure(exc))] * len(batch)
        done = time.perf_counter()
        self.oldest_in_batch = 0.0  # before any caller hears back: health() is current
        with self._metrics_lock:
            for _, _, _, queued in batch:
                self.write_wait.observe(began - queued)
            self.commit.observe(done - began)
        mark_failed(batch, results)
        settle_batch(batch, results)

    def _fast_transaction(self, writer: Writer, batch: list[Job]) -> list[tuple[bool, Any]] | None:
        """The batch without savepoints, append rows written in bulk; None
        (and nothing written) when a job raised: the caller runs the batch
        again job by job. A fault of the store itself propagates."""
        results: list[tuple[bool, Any]] = []
        writer.db.execute("BEGIN IMMEDIATE")
        if self.shared:
            writer.forget()
        writer.deferring = True
        try:
            for fn, _, _, _ in batch:
                if type(fn) is not AppendJob:
                    writer.flush_rows()  # other jobs see every row before them
                results.append((True, fn(writer)))
            writer.flush_heads()
        except Exception as exc:
            if store_fault(exc):
                raise
            rollback(writer)
            return None
        finally:
            writer.deferring = False
        results = positioned(writer, results)
        writer.db.execute("COMMIT")
        return results

    def _transaction(self, writer: Writer, batch: list[Job]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        writer.db.execute("BEGIN IMMEDIATE")
        if self.shared:
            writer.forget()
        for fn, _, _, _ in batch:
            writer.db.execute("SAVEPOINT job")
            try:
                results.append((True, fn(writer)))
                writer.db.execute("RELEASE job")
            except Exception as exc:
                if store_fault(exc):
                    raise  # the store's own (I/O, full, busy, corrupt): the whole batch
                writer.db.execute("ROLLBACK TO job")
                writer.db.execute("RELEASE job")
                writer.after_failed_job()  # heads it marked may be the rolled-back ones
                if not isinstance(exc, StorageError):
                    self.writer_errors += 1
                    log.warning("sqlite writer: a write failed alone: %s: %s",
                                type(exc).__name__, exc)
                results.append((False, failure(exc)))
        writer.flush_heads()
        results = positioned(writer, results)
        writer.db.execute("COMMIT")
        return results

    def _alone(self, writer: Writer, job: Job) -> tuple[bool, Any]:
        try:
            return self._transaction(writer, [job])[0]
        except Exception as exc:
            rollback(writer)
            self._note(exc)
            mark_failed([job], [(False, exc)])  # before the jobs after it run
            return False, failure(exc)

    def _note(self, exc: Exception) -> None:
        """Count a failed transaction; remember a damaged store (health())."""
        self.writer_errors += 1
        if corrupt(exc):
            self.corruption = str(exc)
        log.warning("sqlite writer: transaction failed: %s: %s", type(exc).__name__, exc)

    def health(self) -> list[str]:
        """What keeps this store from serving, for /readyz ([] when fine):
        a writer thread that stopped, a batch older than `wedge_s`, or a
        damaged file (SQLITE_CORRUPT / SQLITE_NOTADB seen by any statement)."""
        problems = []
        if self._thread is not None and not self._thread.is_alive():
            problems.append("storage writer stopped")
        oldest = self.oldest_in_batch
        if oldest:
            age = time.perf_counter() - oldest
            if age > self.wedge_s:
                problems.append(f"storage writer wedged: oldest job {age:.1f} s")
        if self.corruption:
            problems.append(f"storage corrupt: {self.corruption}")
        return problems

    def families(self) -> Iterator[Metric]:
        with self._metrics_lock:  # a histogram the writer thread is updating: a snapshot
            wait, commit = self.write_wait.family(), self.commit.family()
        yield wait
        yield commit
        yield metrics.counter("chatplane_storage_writer_errors_total",
                              "SQLite writer jobs or transactions that failed with an exception"
                              " (the writer went on)", self.writer_errors)
        oldest = self.oldest_in_batch
        wedged = bool(oldest) and time.perf_counter() - oldest > self.wedge_s
        alive = self._thread is not None and self._thread.is_alive()
        yield metrics.gauge("chatplane_storage_writer_up",
                            "1 while the SQLite writer thread runs and keeps up (0: stopped, "
                            "closed, or its oldest job waits past the wedge limit)",
                            1 if alive and not wedged else 0)

    async def _write(self, fn: Callable[[Writer], T]) -> T:
        future = self._queue(fn)
        with tracing.db_span("sqlite", "write", self._span_target):  # queued, committed
            return await future

    def _queue(self, fn: Callable[[Writer], T]) -> asyncio.Future[T]:
        """Queue a write behind every write queued before it; its future is done once
        its transaction committed (or failed)."""
        if self._thread is None:
            raise StorageUnavailable("storage is closed")
        if not self._thread.is_alive():  # never queue a write nobody will take
            raise StorageUnavailable("storage writer stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._turn:
            loop.call_soon(self._submit)
        self._turn.append((fn, future, loop, time.perf_counter()))
        return future

    def _submit(self) -> None:
        if self._turn:
            jobs, self._turn = self._turn, []
            self._jobs.put(jobs)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader = self._reader
        if reader is None:
            raise StorageUnavailable("storage is closed")
        try:
            with tracing.db_span("sqlite", "read", self._span_target):
                return await asyncio.get_running_loop().run_in_executor(self._read_pool, fn,
                                                                        reader)
        except sqlite3.Error as exc:
            if corrupt(exc):
                self.corruption = str(exc)
            raise StorageUnavailable(f"sqlite read failed: {exc}") from exc
        except (OverflowError, ValueError) as exc:  # a value SQLite cannot hold
            raise StorageError(f"sqlite read refused: {type(exc).__name__}: {exc}") from exc

    # -- the Storage interface ---------------------------------------------

    async def ensure_direct(self, a: str, b: str, now_ms: int) -> Conversation:
        conversation_id = direct_conversation_id(a, b)
        members = json.dumps(sorted({a, b}))

        def create(writer: Writer) -> None:
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

    async def append(self, request: SendRequest, recipients: Sequence[str],
                     inboxes: Collection[str] | None = None) -> AppendResult:
        job = AppendJob(request, tuple(recipients), None if inboxes is None else frozenset(inboxes))
        send = pipelined(request)
        if send is None:
            result: AppendResult = await self._write(job)
            return result
        # one writer runs the jobs in the order they were queued: the device's next
        # send may start now (storage/pipelining.py)
        job.after = send.after if isinstance(send.after, AppendJob) else None
        future = self._queue(job)
        send.mark_queued(job)
        with tracing.db_span("sqlite", "write", self._span_target):
            result = await future
        return result

    async def fan_out(self, conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]],
                      fresh: Collection[int] = ()) -> list[InboxItem]:
        chosen = [(seq, tuple(users)) for seq, users in entries]
        new = frozenset(fresh)
        items: list[InboxItem] = await self._write(
            lambda writer: writer.fan_out(conversation_id, chosen, new))
        return items

    async def fanned_out(self, conversation_id: str, seqs: Sequence[int]) -> None:
        done = [(conversation_id, seq) for seq in seqs]

        def forget(writer: Writer) -> None:
            writer.db.executemany("DELETE FROM fanouts WHERE conversation_id = ? AND seq = ?",
                                  done)

        if done:
            await self._write(forget)

    async def unfinished(self, conversation_id: str) -> list[tuple[int, tuple[str, ...]]]:
        def read(db: sqlite3.Connection) -> list[tuple[int, tuple[str, ...]]]:
            # messages gone since (retention) have nothing left to fan out
            rows = db.execute("SELECT f.seq, f.users FROM fanouts f JOIN messages m"
                              " ON m.conversation_id = f.conversation_id AND m.seq = f.seq"
                              " WHERE f.conversation_id = ? ORDER BY f.seq",
                              (conversation_id,)).fetchall()
            return [(int(seq), tuple(json.loads(users))) for seq, users in rows]

        return await self._read(read)

    async def inbox(self, user_id: str, after_seq: int, limit: int) -> list[InboxItem]:
        columns = ", ".join(f"m.{c.strip()}" for c in MESSAGE_COLUMNS.split(","))

        def read(db: sqlite3.Connection) -> list[InboxItem]:
            rows = db.execute(
                f"SELECT i.inbox_seq, {columns} FROM inbox i JOIN messages m"
                " ON m.conversation_id = i.conversation_id AND m.seq = i.seq"
                " WHERE i.user_id = ? AND i.inbox_seq > ? ORDER BY i.inbox_seq LIMIT ?",
                (user_id, after_seq, limit),
            ).fetchall()
            return [InboxItem(user_id, row[0], message_from_row(row[1:])) for row in rows]

        return await self._read(read)

    async def inbox_head(self, user_id: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            return sqlite_inbox_head(db, user_id)

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
            return [message_from_row(row) for row in rows]

        return await self._read(read)

    async def put_user(self, user_id: str, display_name: str, now_ms: int) -> None:
        def write(writer: Writer) -> None:
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

    async def put_revocation(self, revocation: Revocation) -> None:
        await self._write(lambda writer: writer.db.execute(
            "INSERT INTO revocations (user_id, device_id, before_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, device_id) DO UPDATE SET"
            " before_ms = max(before_ms, excluded.before_ms)",
            (revocation.user_id, revocation.device_id, revocation.before_ms)))

    async def revocations(self) -> list[Revocation]:
        def read(db: sqlite3.Connection) -> list[Revocation]:
            rows = db.execute("SELECT user_id, device_id, before_ms FROM revocations").fetchall()
            return [Revocation(*row) for row in rows]

        return await self._read(read)

    # -- home regions ----------------------------------------------------------

    async def home(self, kind: str, key: str) -> Home | None:
        def read(db: sqlite3.Connection) -> Home | None:
            return _home(db, kind, key)

        return await self._read(read)

    async def offer_home(self, kind: str, key: str, offered: Home) -> Home:
        def offer(writer: Writer) -> Home:
            existing = _home(writer.db, kind, key)
            if not home_replaces(existing, offered):
                assert existing is not None
                return existing
            writer.db.execute(
                "INSERT OR REPLACE INTO homes (kind, key, region, epoch, confirmed)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind, key, offered.region, offered.epoch, int(offered.confirmed)))
            if kind == USER_HOME:
                writer.user_homes.pop(key, None)
            if (kind == CONVERSATION_HOME and offered.confirmed
                    and (existing is None or not existing.confirmed)):
                # messages stored before the conversation had a home (a chat older than
                # its regions' link) join the log now, ahead of the home's next ones
                writer.flush_rows()
                writer.db.execute(
                    "INSERT INTO region_log (conversation_id, seq) SELECT conversation_id, seq"
                    " FROM messages WHERE conversation_id = ? ORDER BY seq", (key,))
            return offered

        home: Home = await self._write(offer)
        return home

    async def take_over_homes(self, lost: str, region: str,
                              behind: Mapping[tuple[str, str], int] | None = None) -> int:
        def take(writer: Writer) -> int:
            db = writer.db
            rows = [(str(kind), str(key)) for kind, key in db.execute(
                "SELECT kind, key FROM homes WHERE region = ?", (lost,))]
            if behind is not None:
                writer.flush_rows()
                _relog(db, rows, behind)
            cursor = db.execute(
                "UPDATE homes SET region = ?, epoch = epoch + 1, confirmed = 1"
                " WHERE region = ?", (region, lost))  # conversations and users
            writer.user_homes.clear()
            if not self.region or region == self.region:
                # homed here now: what the lost home never shipped (a store told of a
                # takeover by another region writes none: the taker does)
                writer.write_owed([key for kind, key in rows if kind == USER_HOME])
            return int(cursor.rowcount)

        taken: int = await self._write(take)
        return taken

    async def home_heads(self, region: str) -> list[tuple[str, str, int]]:
        def read(db: sqlite3.Connection) -> list[tuple[str, str, int]]:
            return [(str(kind), str(key), int(head)) for kind, key, head in db.execute(
                "SELECT h.kind, h.key, CASE h.kind WHEN 'user'"
                " THEN (SELECT COALESCE(MAX(inbox_seq), 0) FROM inbox WHERE user_id = h.key)"
                " ELSE (SELECT COALESCE(MAX(seq), 0) FROM messages"
                " WHERE conversation_id = h.key) END"
                " FROM homes h WHERE h.region = ?", (region,))]

        return await self._read(read)

    # -- the replicated log (ReplicatedLog) -----------------------------------

    def serve_region(self, region: str) -> None:
        self.region = region  # read by the writer thread at each inbox entry

    async def log_after(self, after: int, limit: int,
                        region: str) -> tuple[list[LogEntry], int, int]:
        def read(db: sqlite3.Connection) -> tuple[list[LogEntry], int, int]:
            head = log_head(db)
            positions = db.execute(
                "SELECT lsn FROM region_log WHERE lsn > ? ORDER BY lsn LIMIT ?",
                (after, limit)).fetchall()
            # read after the entries: a trim that had not passed `after` by now
            # deleted none of what was read
            trimmed_to = _trimmed_to(db)
            if after < trimmed_to:
                raise LogTrimmed(after, trimmed_to)
            if not positions:
                return [], after, head
            last = int(positions[-1][0])
            # a message's entry under its conversation's home row, an inbox entry under
            # its user's (the primary key, looked up per entry). An inbox entry names
            # (conversation, seq), which the reader resolves in its own store: served
            # even while no message is stored here at that seq (a lost home's message
            # replaced by a supersede, its own at that seq not applied yet), never dropped
            rows = db.execute(
                f"SELECT l.lsn, h.epoch, l.user_id, l.inbox_seq, l.conversation_id, l.seq,"
                f" {', '.join('m.' + c.strip() for c in MESSAGE_COLUMNS.split(',')[2:])}"
                " FROM region_log l JOIN homes h"
                " ON h.kind = CASE l.user_id WHEN '' THEN 'conversation' ELSE 'user' END"
                " AND h.key = CASE l.user_id WHEN '' THEN l.conversation_id ELSE l.user_id END"
                " AND h.region = ? AND h.confirmed = 1"
                " LEFT JOIN messages m ON m.conversation_id = l.conversation_id"
                " AND m.seq = l.seq"
                " WHERE l.lsn > ? AND l.lsn <= ? AND (l.user_id != '' OR m.seq IS NOT NULL)"
                " ORDER BY l.lsn",
                (region, after, last)).fetchall()
            entries = [_log_entry(r) for r in rows]
            return entries, last, head

        return await self._read(read)

    async def log_head(self) -> int:
        return await self._read(log_head)

    async def log_extent(self) -> LogExtent:
        return await self._read(lambda db: LogExtent(_trimmed_to(db), log_head(db)))

    async def trim_log(self, upto: int, limit: int) -> LogExtent:
        def trim(writer: Writer) -> LogExtent:
            db = writer.db
            head = log_head(db)
            trimmed_to = _trimmed_to(db)
            # by position range (the primary key): `limit` positions, not a scan
            new = min(upto, head, trimmed_to + limit)
            if new <= trimmed_to:
                return LogExtent(trimmed_to, head)
            db.execute("DELETE FROM region_log WHERE lsn > ? AND lsn <= ?", (trimmed_to, new))
            db.execute("INSERT INTO region_log_trimmed (one, lsn) VALUES (1, ?)"
                       " ON CONFLICT (one) DO UPDATE SET lsn = excluded.lsn", (new,))
            return LogExtent(new, head)

        extent: LogExtent = await self._write(trim)
        return extent

    async def log_cursor(self, peer: str) -> int:
        def read(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT lsn FROM region_cursors WHERE peer = ?", (peer,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(read)

    async def apply_log(self, peer: str, entries: Sequence[LogEntry], scanned_to: int,
                        recipients: dict[str, tuple[str, ...]],
                        changes: Mapping[int, MembershipChange] | None = None,
                        large_above: int | None = None) -> list[InboxItem]:
        changed = changes or {}

        def apply(writer: Writer) -> tuple[list[InboxItem], str, int]:
            row = writer.db.execute("SELECT lsn FROM region_cursors WHERE peer = ?",
                                    (peer,)).fetchone()
            if row is not None and int(row[0]) >= scanned_to:
                return [], "", scanned_to  # applied before (a batch read twice)
            items: list[InboxItem] = []
            applied_to, blocked = scanned_to, ""
            for index, entry in enumerate(entries):
                message = entry.message
                # a home past the first epoch took over from a lost one: its history
                # replaces what the lost home sequenced here and never replicated
                supersede = entry.epoch > 1
                if entry.inbox_user:
                    try:
                        item = writer.apply_inbox_entry(entry.inbox_user, entry.inbox_seq,
                                                        message.conversation_id, message.seq)
                    except NotStoredYet as exc:
                        if index == 0:
                            raise
                        # what precedes it is stored: a third region's log waiting on
                        # one of these messages can move on
                        applied_to, blocked = entry.lsn - 1, str(exc)
                        break
                    if item is not None:
                        items.append(item)
                elif message.conversation_id in recipients:
                    items += writer.apply_replicated(message, recipients[message.conversation_id],
                                                     supersede)
                else:
                    items += writer.apply_replicated_group(message, changed.get(entry.lsn),
                                                           large_above, supersede)
            writer.db.execute(
                "INSERT INTO region_cursors (peer, lsn) VALUES (?, ?)"
                " ON CONFLICT (peer) DO UPDATE SET lsn = excluded.lsn", (peer, applied_to))
            return items, blocked, applied_to

        items, blocked, applied_to = await self._write(apply)
        if blocked:
            raise LogBlocked(blocked, items, applied_to)
        return items


def _log_entry(row: Sequence[Any]) -> LogEntry:
    if row[2]:  # an inbox entry: the message is named, not shipped
        message = StoredMessage(conversation_id=row[4], seq=row[5], message_id="", sender="",
                                sender_device="", cid=0, text="", sent_at_ms=0)
        return LogEntry(int(row[0]), int(row[1]), message, str(row[2]), int(row[3]))
    return LogEntry(int(row[0]), int(row[1]), message_from_row(row[4:]))


def _relog(db: sqlite3.Connection, rows: Sequence[tuple[str, str]],
           behind: Mapping[tuple[str, str], int]) -> None:
    """Log again, at new positions, what this store holds of `rows` past `behind` (what
    another region holds of each; 0 when absent): messages first, each conversation's
    in seq order, then inbox entries, each user's in inbox_seq order (a message before
    the entries that name it)."""
    for kind, key in rows:
        if kind == CONVERSATION_HOME:
            db.execute("INSERT INTO region_log (conversation_id, seq) SELECT conversation_id,"
                       " seq FROM messages WHERE conversation_id = ? AND seq > ? ORDER BY seq",
                       (key, behind.get((kind, key), 0)))
    for kind, key in rows:
        if kind == USER_HOME:
            db.execute("INSERT INTO region_log (conversation_id, seq, user_id, inbox_seq)"
                       " SELECT conversation_id, seq, user_id, inbox_seq FROM inbox"
                       " WHERE user_id = ? AND inbox_seq > ? ORDER BY inbox_seq",
                       (key, behind.get((kind, key), 0)))


def _trimmed_to(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT lsn FROM region_log_trimmed WHERE one = 1").fetchone()
    return 0 if row is None else int(row[0])


def _home(db: sqlite3.Connection, kind: str, key: str) -> Home | None:
    row = db.execute("SELECT region, epoch, confirmed FROM homes WHERE kind = ? AND key = ?",
                     (kind, key)).fetchone()
    return None if row is None else Home(row[0], row[1], bool(row[2]))
