"""What the archiver needs of a backend beyond the Storage interface.

Two things, per backend, on a connection of the archiver's own (so the
backends' modules stay untouched): list every conversation with its kind,
and replace archived rows' bodies by stubs. A stub keeps the row and its
key, ids, sender, cid and time and drops text and payload: the timeline stays
contiguous (seqs, inbox references and resend dedup keep working from hot
storage), and the archive layer (storage/archive.py) puts the bodies back
on read.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from chatplane.storage.base import StoredMessage

if TYPE_CHECKING:  # scylla-driver is optional
    from chatplane.storage.cql import CqlSession, CqlSettings

STUB_TYPE = "chatplane/archived"  # content_type of a stubbed row


def is_stub(message: StoredMessage) -> bool:
    return message.content_type == STUB_TYPE and not message.text and not message.payload


class ArchiveRows(Protocol):
    async def conversations(self) -> list[tuple[str, str]]:
        """Every (conversation id, kind)."""
        ...

    async def stub(self, messages: Sequence[StoredMessage]) -> None:
        """Replace these rows' bodies by stubs (only rows still holding them)."""
        ...

    async def close(self) -> None: ...


class SqliteRows:
    """The embedded database file, on a second connection (WAL allows it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.execute("PRAGMA busy_timeout=30000")
        return db

    async def conversations(self) -> list[tuple[str, str]]:
        def read() -> list[tuple[str, str]]:
            db = self._connect()
            try:
                return [(str(r[0]), str(r[1])) for r in
                        db.execute("SELECT id, kind FROM conversations ORDER BY id")]
            finally:
                db.close()

        return await asyncio.to_thread(read)

    async def stub(self, messages: Sequence[StoredMessage]) -> None:
        def write() -> None:
            db = self._connect()
            try:
                with db:
                    db.executemany(
                        "UPDATE messages SET text = '', payload = x'', content_type = ?"
                        " WHERE conversation_id = ? AND seq = ? AND message_id = ?",
                        [(STUB_TYPE, m.conversation_id, m.seq, m.message_id) for m in messages])
            finally:
                db.close()

        await asyncio.to_thread(write)

    async def close(self) -> None:
        return None


class CqlRows:
    """The CQL keyspace, on a session of the archiver's own."""

    def __init__(self, settings: CqlSettings) -> None:
        self.settings = settings
        self._db: CqlSession | None = None
        self._bucket = 0

    async def _session(self) -> CqlSession:
        if self._db is None:
            from chatplane.storage import cql, migrations

            db = await cql.connect(self.settings)
            try:
                buckets = await migrations.check(db, self.settings.keyspace)
            except BaseException:
                await db.close()
                raise
            self._db, self._bucket = db, buckets["message_bucket"]
        return self._db

    async def conversations(self) -> list[tuple[str, str]]:
        db = await self._session()
        # A full scan, paged by the driver: fine for a periodic job; a cluster
        # of a billion conversations splits it by token range (docs/storage.md).
        rows = await db.run(f"SELECT conversation_id, kind FROM {self.settings.keyspace}"
                            ".conversations", timeout_s=120)
        return sorted((str(r["conversation_id"]), str(r["kind"] or "")) for r in rows)

    async def stub(self, messages: Sequence[StoredMessage]) -> None:
        from chatplane.storage import cql

        db = await self._session()
        # Conditional on the message id: a row is stubbed only if it is the
        # message that was archived (LWT, as the rows were written).
        statement = await db.prepare(
            f"UPDATE {self.settings.keyspace}.messages SET text = '', payload = 0x,"
            " content_type = ? WHERE conversation_id = ? AND bucket = ? AND seq = ?"
            " IF message_id = ?", idempotent=True)
        await cql.gather_bounded(
            db.run(statement, (STUB_TYPE, m.conversation_id, (max(m.seq, 1) - 1) // self._bucket,
                               m.seq, m.message_id))
            for m in messages)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()
