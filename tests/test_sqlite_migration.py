"""A data dir written by schema v1 (core messaging only) opens under v2: 1:1
conversations get members and per-user rows, and keep their messages. One written
by v2 opens under v3: the inbox_heads table goes, inbox heads continue from the
inbox rows, and a build that knows only v2 refuses the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from chatplane.storage.base import SendRequest, StorageError
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
    assert check.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "3"


async def test_v2_database_keeps_its_inbox_heads_under_v3(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "chatplane.db"
    storage = SqliteStorage(path)
    await storage.open()
    conversation = await storage.ensure_direct("a", "b", 1)
    for cid in (1, 2):
        await storage.append(SendRequest(conversation.conversation_id, "a", "p", cid, "hi",
                                         f"m{cid}", 10 + cid), ("a", "b"))
    await storage.close()
    db = sqlite3.connect(path)  # as v2 left it: a head table beside the inbox rows
    db.execute("CREATE TABLE inbox_heads (user_id TEXT PRIMARY KEY, head INTEGER NOT NULL)")
    db.execute("INSERT INTO inbox_heads VALUES ('a', 2), ('b', 2)")
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()

    storage = SqliteStorage(path)
    await storage.open()
    assert await storage.inbox_head("b") == 2
    result = await storage.append(SendRequest(conversation.conversation_id, "b", "q", 1, "yo",
                                              "m3", 20), ("a", "b"))
    assert [(item.user_id, item.inbox_seq) for item in result.inbox] == [("a", 3), ("b", 3)]
    assert await storage.inbox_head("a") == 3
    await storage.close()
    check = sqlite3.connect(path)
    assert check.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "3"
    assert check.execute("SELECT name FROM sqlite_master WHERE name = 'inbox_heads'"
                         ).fetchone() is None
    check.close()

    # a build that knows v2 (its check, as it runs at open) refuses the v3 store
    monkeypatch.setattr("chatplane.storage.sqlite.SCHEMA_VERSION", 2)
    with pytest.raises(StorageError, match="schema version 3"):
        await SqliteStorage(path).open()
