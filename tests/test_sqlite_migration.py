"""A data dir written by schema v1 (core messaging only) opens under v2: 1:1
conversations get members and per-user rows, and keep their messages."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from chatplane.storage.sqlite import SCHEMA, SqliteStorage


async def test_v1_database_migrates(tmp_path: Path) -> None:
    path = tmp_path / "chatplane.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)  # the v1 tables, as chatplane 0.1 wrote them
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO conversations (id, kind, members, head_seq, created_at_ms, extra)"
               " VALUES ('d:a:b', 'direct', ?, 2, 5, '{}')", (json.dumps(["a", "b"]),))
    for seq in (1, 2):
        db.execute("INSERT INTO messages VALUES ('d:a:b', ?, ?, 'a', 'p', ?, 'hi', x'', 'text', ?)",
                   (seq, f"m{seq}", seq, 100 + seq))
    db.commit()
    db.close()
    storage = SqliteStorage(path)
    await storage.open()
    conversation = await storage.conversation("d:a:b")
    assert conversation is not None and conversation.members == ("a", "b")
    (summary,) = await storage.conversations_of("b", 10)
    assert (summary.unread, summary.last_activity_ms, summary.name) == (2, 102, "a")
    assert [m.seq for m in await storage.history("d:a:b")] == [1, 2]
    await storage.close()
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
