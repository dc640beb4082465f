"""The SQLite writer survives whatever a write raises (a real database file).

The outage of issue 15: an append with cid = 2**64 - 1 raised OverflowError
inside the writer thread, which died with its transaction open, and every
later write of every user timed out. Now the bad write fails alone, with a
clear error, the good writes of its batch commit, and the writer goes on.
Also: a writer that waits on a lock longer than `wedge_s` says so, and a
file damaged under a running store is reported."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from chatplane.storage.base import SendRequest, StorageError, StorageUnavailable
from chatplane.storage.sqlite import SqliteStorage
from tests.support import prom

TOO_BIG = 2**64 - 1  # no SQLite INTEGER holds it


def send(conv: str, cid: int, text: str = "", sent_at_ms: int = 1) -> SendRequest:
    return SendRequest(conv, "ann", "web", cid, text or f"m{cid}", f"id-{cid}-{text}", sent_at_ms)


async def test_an_overflowing_write_fails_alone_and_the_writer_goes_on(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        assert (await storage.append(send(conv, 1), ["ann", "bob"])).message.seq == 1
        # queued together: one group commit with the bad write in the middle
        results = await asyncio.gather(
            *(storage.append(send(conv, cid), ["ann", "bob"]) for cid in range(2, 12)),
            storage.append(send(conv, TOO_BIG), ["ann", "bob"]),
            storage.append(send(conv, 99, sent_at_ms=TOO_BIG), ["ann", "bob"]),
            *(storage.append(send(conv, cid), ["ann", "bob"]) for cid in range(12, 22)),
            return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 2
        for failure in failures:
            # a clear, non-retriable error naming the cause
            assert isinstance(failure, StorageError)
            assert not isinstance(failure, StorageUnavailable)
            assert "OverflowError" in str(failure)
        good = [r.message.seq for r in results if not isinstance(r, BaseException)]
        assert sorted(good) == list(range(2, 22))  # no seq taken by the bad ones
        # the writer is alive: later writes of anyone succeed at once
        other = (await storage.ensure_direct("cat", "dan", 2)).conversation_id
        later = await asyncio.wait_for(storage.append(
            SendRequest(other, "cat", "web", 1, "hi", "id-cat", 3), ["cat", "dan"]), 5)
        assert later.message.seq == 1
        assert (await storage.append(send(conv, 22), ["ann", "bob"])).message.seq == 22
        history = await storage.history(conv, limit=100)
        assert [m.seq for m in history] == list(range(1, 23))
        assert [i.inbox_seq for i in await storage.inbox("bob", 0, 100)] == list(range(1, 23))
        assert storage.health() == []
        assert storage.writer_errors == 2
        assert prom.of(storage.families)["chatplane_storage_writer_errors_total"] == 2
    finally:
        await storage.close()
    # and what was acked is on disk
    reopened = SqliteStorage(tmp_path / "chat.db")
    await reopened.open()
    try:
        assert await reopened.inbox_head("bob") == 22
    finally:
        await reopened.close()


async def test_an_overflowing_read_is_refused_not_unavailable(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        with pytest.raises(StorageError, match="OverflowError") as caught:
            await storage.history(conv, before_seq=TOO_BIG)
        assert not isinstance(caught.value, StorageUnavailable)
        assert await storage.history(conv) == []
    finally:
        await storage.close()


async def test_a_writer_held_up_by_a_lock_is_reported_wedged_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    storage = SqliteStorage(path, wedge_s=0.5)
    await storage.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        blocker.execute("BEGIN IMMEDIATE")  # another process holds SQLite's write lock
        stuck = asyncio.ensure_future(storage.append(send(conv, 1), ["ann", "bob"]))
        await asyncio.sleep(1.0)
        (problem,) = storage.health()
        assert problem.startswith("storage writer wedged: oldest job ")
        assert float(problem.split()[-2]) >= 0.5
        blocker.execute("ROLLBACK")
        assert (await asyncio.wait_for(stuck, 10)).message.seq == 1
        assert storage.health() == []
    finally:
        blocker.close()
        await storage.close()


async def test_a_write_failing_half_way_leaves_no_gap_in_seqs(tmp_path: Path) -> None:
    """The message row is written, then an inbox row cannot be (a recipient id
    SQLite cannot encode): the rolled-back message's seq must not stay
    claimed, in memory or in the conversation's head."""
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        results = await asyncio.gather(
            storage.append(send(conv, 1), ["ann", "bob"]),
            storage.append(send(conv, 2), ["ann", "bob", "\udc80"]),
            storage.append(send(conv, 3), ["ann", "bob"]),
            return_exceptions=True)
        assert isinstance(results[1], StorageError) and "UnicodeEncodeError" in str(results[1])
        assert sorted(r.message.seq for r in results if not isinstance(r, BaseException)) == [1, 2]
        assert (await storage.append(send(conv, 4), ["ann", "bob"])).message.seq == 3
        assert [m.seq for m in await storage.history(conv)] == [1, 2, 3]
        assert (await storage.conversation(conv)).head_seq == 3  # type: ignore[union-attr]
        assert [i.inbox_seq for i in await storage.inbox("bob", 0, 10)] == [1, 2, 3]
    finally:
        await storage.close()
    reopened = SqliteStorage(tmp_path / "chat.db")
    await reopened.open()
    try:
        conv_row = await reopened.conversation(conv)
        assert conv_row is not None and conv_row.head_seq == 3
        assert (await reopened.append(send(conv, 5), ["ann", "bob"])).message.seq == 4
    finally:
        await reopened.close()
