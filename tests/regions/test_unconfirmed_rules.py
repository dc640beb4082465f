"""The index of what a home sequenced and no peer confirmed (regions/unconfirmed.py), on a
real embedded store: reads stop below a conversation's first unconfirmed seq and a user's
first unconfirmed inbox_seq, a peer's confirmation or acking alone lifts that, `async`
caps nothing, and after a restart everything the log retains counts as unconfirmed until
a peer confirms it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatplane.regions.durability import ASYNC, SYNC, Durability
from chatplane.regions.unconfirmed import Unconfirmed
from chatplane.storage.base import CONVERSATION_HOME, AppendResult, Home, InboxItem
from chatplane.storage.sqlite import SqliteStorage
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
CHAT = "d:alice:bob"


async def homed_store(path: Path) -> SqliteStorage:
    """eu's store, homing the chat of alice and bob (so its appends are logged)."""
    storage = SqliteStorage(path)
    await storage.open()
    storage.serve_region("eu")
    await storage.ensure_direct("alice", "bob", NOW_MS)
    await storage.offer_home(CONVERSATION_HOME, CHAT, Home("eu", 1))
    await storage.offer_home(CONVERSATION_HOME, CHAT, Home("eu", 1, True))
    return storage


async def append(storage: SqliteStorage, cid: int) -> AppendResult:
    return await storage.append(send(CHAT, "alice", cid, f"m{cid}"), ("alice", "bob"))


async def test_reads_stop_below_the_first_unconfirmed_until_a_peer_confirms(
        tmp_path: Path) -> None:
    storage = await homed_store(tmp_path / "eu.db")
    try:
        durability = Durability.of(SYNC, 1.0, storage, ["us"])
        index = Unconfirmed("eu", durability, storage)
        await index.ready()
        first, second = await append(storage, 1), await append(storage, 2)
        for result in (first, second):
            index.appended(result)
        assert first.log_position < second.log_position
        assert index.seq_cap(CHAT) == 0 and index.seq_cap("d:carol:dave") is None
        assert [(i.user_id, i.inbox_seq) for i in first.inbox] == [("alice", 1), ("bob", 1)]
        assert index.inbox_cap("bob") == 0 and index.inbox_cap("carol") is None
        await durability.applied("us", first.log_position)
        assert index.seq_cap(CHAT) == 1  # seq 2 still waits
        await durability.applied("us", second.log_position)
        assert index.seq_cap(CHAT) is None and index.view() == {"conversations": 0, "inboxes": 0}
        # a duplicate (a resend) adds nothing; acking alone lifts every cap
        third = await append(storage, 3)
        index.appended(third)
        index.appended(await append(storage, 3))
        assert index.seq_cap(CHAT) == 2
        durability.lost.add("us")
        durability.may_ack_alone = lambda: True
        assert index.seq_cap(CHAT) is None
    finally:
        await storage.close()


async def test_an_inbox_page_is_cut_before_its_first_unconfirmed_entry(tmp_path: Path) -> None:
    storage = await homed_store(tmp_path / "eu.db")
    try:
        durability = Durability.of(SYNC, 1.0, storage, ["us"])
        index = Unconfirmed("eu", durability, storage)
        confirmed = await append(storage, 1)
        await durability.applied("us", confirmed.log_position)
        unconfirmed = await append(storage, 2)
        index.appended(unconfirmed)
        page = [i for r in (confirmed, unconfirmed) for i in r.inbox if i.user_id == "bob"]
        assert [i.inbox_seq for i in page] == [1, 2]
        assert index.inbox_page("bob", 0, page, 2) == (page[:1], 1)
        assert index.inbox_page("bob", 1, page[1:], 2) == ([], 1)
        # an entry naming an unconfirmed message is cut too, whoever wrote the entry
        # (a fan-out after the append): the page stops before it
        late = InboxItem("carol", 5, unconfirmed.message)
        assert index.inbox_page("carol", 4, [late], 5) == ([], 4)
    finally:
        await storage.close()


async def test_async_and_regions_without_peers_cap_nothing(tmp_path: Path) -> None:
    storage = await homed_store(tmp_path / "eu.db")
    try:
        for durability in (Durability.of(ASYNC, 1.0, storage, ["us"]),
                           Durability.of(SYNC, 1.0, storage, [])):
            index = Unconfirmed("eu", durability, storage)
            await index.ready()
            index.appended(await append(storage, 1))
            assert not index.active and index.seq_cap(CHAT) is None
    finally:
        await storage.close()


async def test_after_a_restart_what_the_log_retains_waits_for_a_peer(tmp_path: Path) -> None:
    storage = await homed_store(tmp_path / "eu.db")
    try:
        results = [await append(storage, cid) for cid in range(1, 5)]
        await storage.trim_log(results[1].log_position, 100)  # every peer applied 1 and 2
        durability = Durability.of(SYNC, 1.0, storage, ["us"])
        index = Unconfirmed("eu", durability, storage)  # a new process: nothing in memory
        await index.ready()
        assert index.seq_cap(CHAT) == 2
        index.appended(await append(storage, 5))  # a send after the start joins in order
        await durability.applied("us", results[-1].log_position)  # the peer's stream opens
        assert index.seq_cap(CHAT) == 4
    finally:
        await storage.close()


async def test_a_read_waits_for_the_appends_in_flight_when_its_query_returned(
        tmp_path: Path) -> None:
    """A read's query may see a row whose append has not been indexed yet: the read asks
    its caps only once the appends begun before its query returned are indexed."""
    storage = await homed_store(tmp_path / "eu.db")
    try:
        index = Unconfirmed("eu", Durability.of(SYNC, 1.0, storage, ["us"]), storage)
        await index.ready()
        ticket = index.begin()
        result = await append(storage, 1)  # stored: a read's query would see it now
        read = asyncio.ensure_future(index.settled())
        await asyncio.sleep(0.05)
        assert not read.done() and index.seq_cap(CHAT) is None
        index.appended(result)
        index.end(ticket)
        await asyncio.wait_for(read, 1)
        assert index.seq_cap(CHAT) == 0
        earlier = index.begin()
        second_read = asyncio.ensure_future(index.settled())
        await asyncio.sleep(0.01)  # the read waits for `earlier`
        index.begin()  # begun after that read's query returned: not waited for
        index.end(earlier)
        await asyncio.wait_for(second_read, 1)
    finally:
        await storage.close()
