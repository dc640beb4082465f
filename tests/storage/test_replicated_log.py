"""The embedded store's replicated log (storage.base.ReplicatedLog; docs/architecture.md,
"Regions"): two SQLite stores standing for two regions. What the home appends in a homed
conversation is in its log in commit order; the other store applies it by (conversation,
seq) exactly once, with its own inbox entries, and keeps its cursor in the same
transaction, so a batch applied twice or a reopened store changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatplane.storage.base import CONVERSATION_HOME, Home, StorageError
from chatplane.storage.sqlite import SqliteStorage
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
CONVERSATION = "d:alice:bob"


async def _store(path: Path) -> SqliteStorage:
    storage = SqliteStorage(path)
    await storage.open()
    return storage


async def test_the_log_holds_homed_messages_and_applies_once(tmp_path: Path) -> None:
    eu, us = await _store(tmp_path / "eu.db"), await _store(tmp_path / "us.db")
    try:
        await eu.ensure_direct("alice", "bob", NOW_MS)
        await eu.append(send(CONVERSATION, "alice", 1, "before any home"), ("alice", "bob"))
        # a conversation without a home row is not logged (a group, an event stream)
        assert (await eu.log_after(0, 100, "eu"))[0] == []
        await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1))
        # confirmed: what the chat held before joins the log, ahead of what follows
        await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        for cid in range(2, 6):
            await eu.append(send(CONVERSATION, "alice", cid, f"m{cid}"), ("alice", "bob"))
        await eu.ensure_direct("carol", "dave", NOW_MS)
        await eu.append(send("d:carol:dave", "carol", 1, "no home"), ("carol", "dave"))
        entries, scanned, head = await eu.log_after(0, 100, "eu")
        assert [(e.message.seq, e.epoch) for e in entries] == [(n, 1) for n in range(1, 6)]
        assert scanned == head == entries[-1].lsn
        assert (await eu.log_after(0, 100, "us"))[0] == []  # homed in eu, not us
        first, to, _ = await eu.log_after(0, 2, "eu")
        assert len(first) == 2 and to == first[-1].lsn

        await us.ensure_direct("alice", "bob", NOW_MS)
        await us.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        # an entry that would leave a hole (seq 1 missing here) is refused, nothing written
        with pytest.raises(StorageError):
            await us.apply_log("eu", entries[1:], scanned, {CONVERSATION: ("alice", "bob")})
        assert await us.log_cursor("eu") == 0 and await us.history(CONVERSATION) == []
        items = await us.apply_log("eu", entries, scanned, {CONVERSATION: ("alice", "bob")})
        assert [(i.user_id, i.inbox_seq, i.message.seq) for i in items if i.user_id == "bob"] == [
            ("bob", n, n) for n in range(1, 6)]
        assert await us.log_cursor("eu") == scanned
        # the same batch again (a stream reopened from an older cursor): nothing new
        assert await us.apply_log("eu", entries, scanned, {CONVERSATION: ("alice", "bob")}) == []
        assert await us.inbox_head("bob") == 5
        mine = [m.message_id for m in await eu.history(CONVERSATION)]
        assert [m.message_id for m in await us.history(CONVERSATION)] == mine
        # an entry applied here is never served from here: us does not home the chat
        assert (await us.log_after(0, 100, "us"))[0] == []
    finally:
        await eu.close()
        await us.close()


async def test_the_cursor_survives_a_restart(tmp_path: Path) -> None:
    us = await _store(tmp_path / "us.db")
    await us.ensure_direct("alice", "bob", NOW_MS)
    await us.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
    eu = await _store(tmp_path / "eu.db")
    await eu.ensure_direct("alice", "bob", NOW_MS)
    await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
    await eu.append(send(CONVERSATION, "alice", 1, "hi"), ("alice", "bob"))
    entries, scanned, _ = await eu.log_after(0, 10, "eu")
    await us.apply_log("eu", entries, scanned, {CONVERSATION: ("alice", "bob")})
    await us.close()
    again = await _store(tmp_path / "us.db")
    try:
        assert await again.log_cursor("eu") == scanned
        assert (await eu.log_after(scanned, 10, "eu"))[0] == []
    finally:
        await again.close()
        await eu.close()
