"""The parts of issue 17's log trimming and home cache that live in one process, on a
real SQLite store: the trim floor is the lowest position every configured peer
confirmed (a peer that confirmed nothing holds it at 0), and the cache of confirmed
home rows is bounded, a miss read back from storage."""

from __future__ import annotations

from pathlib import Path

import grpc

from chatplane.regions.durability import Durability
from chatplane.regions.homes import Homes
from chatplane.regions.trimming import NOT_A_PEER, Trimming
from chatplane.storage.base import CONVERSATION_HOME, Home, LogExtent
from chatplane.storage.sqlite import SqliteStorage
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
CHAT = "d:alice:bob"


def _no_channel(name: str) -> grpc.aio.Channel:
    raise AssertionError(f"no call to {name} expected")


async def test_every_peer_must_confirm_before_an_entry_is_trimmed(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "eu.db")
    await storage.open()
    try:
        await storage.ensure_direct("alice", "bob", NOW_MS)
        await storage.offer_home(CONVERSATION_HOME, CHAT, Home("eu", 1, True))
        for cid in range(1, 21):
            await storage.append(send(CHAT, "alice", cid), ("alice", "bob"))
        durability = Durability.of("async", 1.0, storage, ["us", "ap"])
        trimming = Trimming(storage, durability)
        await durability.applied("us", 15)
        await trimming.trim_once()  # ap confirmed nothing: it holds everything
        assert trimming.extent == LogExtent(0, 20) and trimming.held_by() == ["ap"]
        await durability.applied("ap", 12)
        await trimming.trim_once()
        assert trimming.extent == LogExtent(12, 20) and trimming.trimmed == 12
        assert trimming.held_by() == ["ap"]
        await durability.applied("ap", 20)
        await trimming.trim_once()
        assert trimming.extent == LogExtent(15, 20) and trimming.held_by() == ["us"]
        report = trimming.report()
        assert (report["entries"], report["oldest_retained"]) == (5, 16)
        # no peer at all: nothing says the entries are anywhere else
        alone = Trimming(storage, Durability.of("async", 1.0, storage, []))
        assert alone.floor() == 0
        # refused reads are counted per configured peer; any other name under one key
        for name in ("us", "us", *(f"forged-{i}" for i in range(100))):
            trimming.refuse(name)
        assert trimming.report()["refused_reads"] == {"us": 2, NOT_A_PEER: 100}
    finally:
        await storage.close()


async def test_the_confirmed_home_cache_is_bounded(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "eu.db")
    await storage.open()
    try:
        homes = Homes("eu", storage, [], _no_channel)
        homes.confirmed_cache = 4
        rows = {f"d:u{n}:v{n}": Home("us", 1, True) for n in range(10)}
        for key, row in rows.items():
            await homes.learn(CONVERSATION_HOME, key, row)
        held = [key for key in rows if homes.known(CONVERSATION_HOME, key) is not None]
        assert held == list(rows)[-4:]  # the least recently used went first
        first = next(iter(rows))
        # evicted, not forgotten: read back from storage (no placement: it is us's)
        assert await homes.stored(CONVERSATION_HOME, first) == rows[first]
        assert await homes.of(CONVERSATION_HOME, first) == rows[first]
        assert homes.known(CONVERSATION_HOME, first) == rows[first]
        assert sum(homes.known(CONVERSATION_HOME, key) is not None for key in rows) == 4
    finally:
        await storage.close()
