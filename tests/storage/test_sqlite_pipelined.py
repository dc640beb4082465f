"""One device's pipelined sends on the SQLite writer (storage/pipelining.py): each
append is queued before the next starts, so they take seqs in cid order and share a
commit; an append after one that was not stored is refused, unstored and retriable
(the device resends from the failed cid, so nothing it sent later holds a seq before
it). A real file, no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatplane.storage.base import AppendResult, Fenced, SendRequest, StorageUnavailable
from chatplane.storage.pipelining import PIPELINED, PipelinedSend
from chatplane.storage.sqlite import SqliteStorage


def send(conv: str, cid: int, fence: int | None = None) -> SendRequest:
    return SendRequest(conv, "ann", "web", cid, f"m{cid}", f"id-{cid}", 1, fence=fence)


async def pipeline(storage: SqliteStorage,
                   requests: list[SendRequest]) -> list[AppendResult | BaseException]:
    """Each request's append started once the one before it was queued, as
    im/requests.py's handle_sends starts a device's sends."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[AppendResult]] = []
    after: object = None
    for request in requests:
        pipelined = PipelinedSend(request.conversation_id, request.sender,
                                  request.sender_device, request.cid, loop.create_future(), after)
        token = PIPELINED.set(pipelined)
        try:
            task = loop.create_task(storage.append(request, ["ann", "bob"]))
        finally:
            PIPELINED.reset(token)
        task.add_done_callback(pipelined.finished)
        tasks.append(task)
        await pipelined.queued
        assert pipelined.ticket is not None, "SQLite queues a pipelined append"
        after = pipelined.ticket
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_pipelined_sends_take_seqs_in_cid_order_in_one_commit(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        before = sum(storage.commit.counts)
        results = await pipeline(storage, [send(conv, cid) for cid in range(1, 21)])
        assert [r.message.seq for r in results if isinstance(r, AppendResult)] == list(
            range(1, 21))
        assert sum(storage.commit.counts) - before <= 2  # a commit each was 20
    finally:
        await storage.close()


async def test_a_send_after_one_not_stored_is_refused_unstored(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        stale = await storage.acquire(conv, "im-a")
        fence = await storage.acquire(conv, "im-b")  # im-a's epoch is stale now
        results = await pipeline(storage, [send(conv, 1, fence), send(conv, 2, stale),
                                           send(conv, 3, fence), send(conv, 4, fence)])
        assert isinstance(results[0], AppendResult) and results[0].message.seq == 1
        assert isinstance(results[1], Fenced)
        for cid, refused in ((2, results[2]), (3, results[3])):  # each behind a failed one
            assert isinstance(refused, StorageUnavailable), refused
            assert f"cid {cid} of this device was not stored" in str(refused), refused
        assert [m.cid for m in await storage.history(conv, limit=10)] == [1]
        # the device resends from cid 2 (with the current fence): seqs follow its cids
        again = await pipeline(storage, [send(conv, cid, fence) for cid in (2, 3, 4)])
        assert [r.message.seq for r in again if isinstance(r, AppendResult)] == [2, 3, 4]
    finally:
        await storage.close()


async def test_an_append_not_pipelined_ignores_another_sends_pipelining(tmp_path: Path) -> None:
    """An append made on the way (an event, another conversation) is not the send being
    pipelined: it neither takes its ticket nor marks it queued."""
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        loop = asyncio.get_running_loop()
        pipelined = PipelinedSend(conv, "ann", "web", 7, loop.create_future())
        token = PIPELINED.set(pipelined)
        try:
            await storage.append(send(conv, 6), ["ann", "bob"])  # another cid
        finally:
            PIPELINED.reset(token)
        assert not pipelined.queued.done() and pipelined.ticket is None
    finally:
        await storage.close()


@pytest.fixture(autouse=True)
def _no_leak() -> None:
    assert PIPELINED.get() is None
