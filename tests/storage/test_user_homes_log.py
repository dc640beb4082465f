"""User homes on the embedded store's replicated log (docs/architecture.md, "User
homes"): two SQLite stores standing for two regions, alice homed in eu, bob in us. A
store writes inbox entries only for the users it homes; the others' come through their
home's log as (user, inbox_seq) entries, applied by (user, inbox_seq) once and without
a hole, so both stores end with the same inbox for every user."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatplane.storage.base import CONVERSATION_HOME, USER_HOME, Home, LogBlocked, StorageError
from chatplane.storage.sqlite import SqliteStorage
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
CONVERSATION = "d:alice:bob"
HOMES = {"alice": Home("eu", 1, True), "bob": Home("us", 1, True)}


async def _region(path: Path, name: str) -> SqliteStorage:
    storage = SqliteStorage(path)
    await storage.open()
    storage.serve_region(name)
    await storage.ensure_direct("alice", "bob", NOW_MS)
    await storage.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
    for user, home in HOMES.items():
        await storage.offer_home(USER_HOME, user, home)
    return storage


async def _inbox(storage: SqliteStorage, user: str) -> list[tuple[int, str, int]]:
    return [(i.inbox_seq, i.message.conversation_id, i.message.seq)
            for i in await storage.inbox(user, 0, 100)]


async def test_each_inbox_is_written_by_its_home_and_replicated(tmp_path: Path) -> None:
    eu, us = await _region(tmp_path / "eu.db", "eu"), await _region(tmp_path / "us.db", "us")
    try:
        for cid in (1, 2, 3):  # eu homes the chat: it writes alice's entries only
            result = await eu.append(send(CONVERSATION, "alice", cid, f"m{cid}"),
                                     ("alice", "bob"))
            assert [i.user_id for i in result.inbox] == ["alice"]
        assert await eu.inbox_head("bob") == 0
        messages, scanned, _ = await eu.log_after(0, 100, "eu")
        # eu's log: the messages and alice's entries (eu homes her); none of bob's
        assert [(e.inbox_user, e.message.seq) for e in messages] == [
            ("", 1), ("alice", 1), ("", 2), ("alice", 2), ("", 3), ("alice", 3)]
        # us applies it: the messages, alice's entries at eu's inbox_seqs, and bob's,
        # written here (us homes him) as each message arrives
        items = await us.apply_log("eu", messages, scanned, {CONVERSATION: ("alice", "bob")})
        assert sorted((i.user_id, i.inbox_seq) for i in items) == [
            ("alice", 1), ("alice", 2), ("alice", 3), ("bob", 1), ("bob", 2), ("bob", 3)]
        bobs, bob_scanned, _ = await us.log_after(0, 100, "us")
        assert [(e.inbox_user, e.inbox_seq) for e in bobs] == [("bob", n) for n in (1, 2, 3)]
        # the entry carries only the message's name, not the message
        assert bobs[0].message.text == "" and bobs[0].message.seq == 1
        await eu.apply_log("us", bobs, bob_scanned, {})
        for user in ("alice", "bob"):
            assert await _inbox(eu, user) == await _inbox(us, user) == [
                (n, CONVERSATION, n) for n in (1, 2, 3)]
        # applied twice (a stream reopened from an older cursor): nothing changes
        assert await eu.apply_log("us", bobs, bob_scanned + 1, {}) == []
        assert await eu.inbox_head("bob") == 3
    finally:
        await eu.close()
        await us.close()


async def test_an_inbox_entry_is_never_applied_past_a_hole(tmp_path: Path) -> None:
    eu, us = await _region(tmp_path / "eu.db", "eu"), await _region(tmp_path / "us.db", "us")
    try:
        for cid in (1, 2):
            await eu.append(send(CONVERSATION, "alice", cid, f"m{cid}"), ("alice", "bob"))
        entries, scanned, _ = await eu.log_after(0, 100, "eu")
        alices = [e for e in entries if e.inbox_user]
        # alice's entries before the messages they name: refused, nothing written
        with pytest.raises(StorageError, match="not stored here yet"):
            await us.apply_log("eu", alices, scanned, {})
        await us.apply_log("eu", [e for e in entries if not e.inbox_user], 1,
                           {CONVERSATION: ("alice", "bob")})
        # alice#2 without alice#1: a hole
        with pytest.raises(StorageError, match="hole"):
            await us.apply_log("eu", alices[1:], scanned, {})
        assert await us.inbox_head("alice") == 0
    finally:
        await eu.close()
        await us.close()


async def test_a_batch_is_stored_up_to_an_entry_naming_a_message_not_stored_yet(
        tmp_path: Path) -> None:
    """Three regions: an inbox entry may name a message of a third region's log not
    applied here yet. The batch is stored up to that entry (the cursor just before
    it) rather than not at all, so a third log waiting on this batch's messages moves
    on; the rest is applied once the message is there."""
    eu, us = await _region(tmp_path / "eu.db", "eu"), await _region(tmp_path / "us.db", "us")
    try:
        for cid in (1, 2):
            await eu.append(send(CONVERSATION, "alice", cid, f"m{cid}"), ("alice", "bob"))
        entries, scanned, _ = await eu.log_after(0, 100, "eu")
        first, alice1, second, alice2 = entries
        with pytest.raises(LogBlocked, match="names d:alice:bob#2, not stored here yet") as info:
            await us.apply_log("eu", [first, alice1, alice2], scanned,
                               {CONVERSATION: ("alice", "bob")})
        assert info.value.applied_to == alice2.lsn - 1
        assert await us.log_cursor("eu") == alice2.lsn - 1
        assert sorted((i.user_id, i.inbox_seq) for i in info.value.items) == [
            ("alice", 1), ("bob", 1)]
        assert await _inbox(us, "alice") == [(1, CONVERSATION, 1)]
        # read again from the cursor, with the message this time
        await us.apply_log("eu", [second, alice2], scanned, {CONVERSATION: ("alice", "bob")})
        assert await _inbox(us, "alice") == [(1, CONVERSATION, 1), (2, CONVERSATION, 2)]
        assert await us.log_cursor("eu") == scanned
    finally:
        await eu.close()
        await us.close()


async def test_a_takeover_moves_user_homes_and_writes_what_the_lost_home_owed(
    tmp_path: Path,
) -> None:
    """us stores two messages for alice, homed in eu; eu ships alice's entry for the
    first only, then is lost: the takeover writes the second's (owed) after it."""
    eu, us = await _region(tmp_path / "eu.db", "eu"), await _region(tmp_path / "us.db", "us")
    try:
        for cid in (1, 2):
            result = await eu.append(send(CONVERSATION, "alice", cid, f"m{cid}"),
                                     ("alice", "bob"))
        entries, _, _ = await eu.log_after(0, 100, "eu")
        shipped = [e for e in entries if not e.inbox_user or e.inbox_seq == 1]
        await us.apply_log("eu", shipped, shipped[-1].lsn, {CONVERSATION: ("alice", "bob")})
        assert await _inbox(us, "alice") == [(1, CONVERSATION, 1)]
        assert await us.take_over_homes("eu", "us") == 2  # the chat and alice
        assert await us.home(USER_HOME, "alice") == Home("us", 2, True)
        assert await _inbox(us, "alice") == [(1, CONVERSATION, 1), (2, CONVERSATION, 2)]
        # from then on this store writes alice's entries
        result = await us.append(send(CONVERSATION, "bob", 1, "after"), ("alice", "bob"))
        assert sorted((i.user_id, i.inbox_seq) for i in result.inbox) == [("alice", 3),
                                                                           ("bob", 3)]
    finally:
        await eu.close()
        await us.close()
