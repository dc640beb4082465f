"""An admin move of a user's home on the embedded store (docs/architecture.md, "Moving a
user's home"; regions/user_moves.py drives it): two SQLite stores standing for two
regions, alice homed in eu, a chat homed in each (bob's in eu, carol's in us), the logs
shipped by hand. The old home's hold records alice's entries as owed instead of
writing them; the new home takes her row only holding her inbox to the old home's
head, and writes what it owes in the same transaction; a move given up writes the
held entries at the old home."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from chatplane.storage.base import CONVERSATION_HOME, USER_HOME, Home
from chatplane.storage.sqlite import SqliteStorage
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
WITH_BOB = "d:alice:bob"  # homed in eu
WITH_CAROL = "d:alice:carol"  # homed in us
RECIPIENTS = {WITH_BOB: ("alice", "bob"), WITH_CAROL: ("alice", "carol")}


async def _region(path: Path, name: str) -> SqliteStorage:
    storage = SqliteStorage(path)
    await storage.open()
    storage.serve_region(name)
    for other in ("bob", "carol"):
        await storage.ensure_direct("alice", other, NOW_MS)
    await storage.offer_home(CONVERSATION_HOME, WITH_BOB, Home("eu", 1, True))
    await storage.offer_home(CONVERSATION_HOME, WITH_CAROL, Home("us", 1, True))
    for user, home in (("alice", "eu"), ("bob", "eu"), ("carol", "us")):
        await storage.offer_home(USER_HOME, user, Home(home, 1, True))
    await storage.offer_home(CONVERSATION_HOME, "u:alice", Home("eu", 1, True))
    return storage


async def _ship(source: SqliteStorage, region: str, target: SqliteStorage,
                upto: int | None = None) -> None:
    """`target` applies `source`'s log (the entries `region` homes) from its cursor."""
    after = await target.log_cursor(region)
    entries, scanned, _ = await source.log_after(after, 1000, region)
    if upto is not None:
        entries, scanned = [e for e in entries if e.lsn <= upto], min(scanned, upto)
    if scanned > after:
        await target.apply_log(region, entries, scanned, RECIPIENTS)


async def _inbox(storage: SqliteStorage) -> list[tuple[int, str, int]]:
    return [(i.inbox_seq, i.message.conversation_id, i.message.seq)
            for i in await storage.inbox("alice", 0, 100)]


def _owed(path: Path) -> list[tuple[str, int]]:
    db = sqlite3.connect(path)
    try:
        return [(str(c), int(s)) for c, s in db.execute(
            "SELECT conversation_id, seq FROM inbox_owed WHERE user_id = 'alice'"
            " ORDER BY conversation_id, seq")]
    finally:
        db.close()


async def test_the_new_home_writes_what_the_held_old_home_did_not(tmp_path: Path) -> None:
    eu = await _region(tmp_path / "eu.db", "eu")
    us = await _region(tmp_path / "us.db", "us")
    try:
        await eu.append(send(WITH_BOB, "bob", 1), RECIPIENTS[WITH_BOB])  # alice#1, in eu
        await us.append(send(WITH_CAROL, "carol", 1), RECIPIENTS[WITH_CAROL])  # owed in us
        await _ship(us, "us", eu)  # eu writes alice#2 for carol's
        head, inbox_head = await eu.hold_inbox("alice")
        assert inbox_head == 2
        # held: what eu stores for alice now is owed, never written (carol's message
        # arriving from us first, then bob's committed in eu)
        await us.append(send(WITH_CAROL, "carol", 2), RECIPIENTS[WITH_CAROL])
        await _ship(us, "us", eu)
        during = await eu.append(send(WITH_BOB, "bob", 2), RECIPIENTS[WITH_BOB])
        assert [i.user_id for i in during.inbox] == ["bob"]  # bob's only: eu homes him
        assert await eu.inbox_head("alice") == 2
        assert _owed(tmp_path / "eu.db") == [(WITH_BOB, 2), (WITH_CAROL, 2)]
        # us behind the head: it takes nothing
        taken = Home("us", 2, True)
        assert await us.take_user_home("alice", taken, inbox_head, ("u:alice", "r:alice")) == (
            None, [])
        assert await us.home(USER_HOME, "alice") == Home("eu", 1, True)
        await _ship(eu, "eu", us, upto=head)  # the catch-up: eu's log to the head
        row, items = await us.take_user_home("alice", taken, inbox_head, ("u:alice", "r:alice"))
        assert row == taken
        # what us owed: bob's second (applied below), carol's second (committed in us)
        assert [(i.inbox_seq, i.message.conversation_id, i.message.seq) for i in items] == [
            (3, WITH_CAROL, 2)]
        assert await us.home(CONVERSATION_HOME, "u:alice") == taken  # moved with her
        assert await us.home(CONVERSATION_HOME, "r:alice") is None  # none held: none made
        await _ship(eu, "eu", us)  # past the head: bob's second, alice's entry by us now
        # eu learns the row and lets go: it writes nothing, us's entries arrive
        await eu.offer_home(USER_HOME, "alice", taken)
        assert await eu.release_inbox("alice") == []
        await _ship(us, "us", eu)
        assert await _inbox(eu) == await _inbox(us) == [
            (1, WITH_BOB, 1), (2, WITH_CAROL, 1), (3, WITH_CAROL, 2), (4, WITH_BOB, 2)]
        assert _owed(tmp_path / "eu.db") == _owed(tmp_path / "us.db") == []
    finally:
        await eu.close()
        await us.close()


async def test_a_move_given_up_writes_the_held_entries_at_the_old_home(tmp_path: Path) -> None:
    eu = await _region(tmp_path / "eu.db", "eu")
    try:
        await eu.append(send(WITH_BOB, "bob", 1), RECIPIENTS[WITH_BOB])
        await eu.hold_inbox("alice")
        for cid in (2, 3):
            await eu.append(send(WITH_BOB, "bob", cid), RECIPIENTS[WITH_BOB])
        assert await eu.inbox_head("alice") == 1
        items = await eu.release_inbox("alice")  # still homed here: owed ones written
        assert [(i.inbox_seq, i.message.seq) for i in items] == [(2, 2), (3, 3)]
        after = await eu.append(send(WITH_BOB, "bob", 4), RECIPIENTS[WITH_BOB])
        assert [(i.user_id, i.inbox_seq) for i in after.inbox] == [("alice", 4), ("bob", 4)]
        assert await _inbox(eu) == [(n, WITH_BOB, n) for n in (1, 2, 3, 4)]
        assert _owed(tmp_path / "eu.db") == []
    finally:
        await eu.close()
