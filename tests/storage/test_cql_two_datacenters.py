"""Two regions on one multi-datacenter keyspace (docs/architecture.md, "Regions on CQL").

Real processes: two Cassandra nodes of one cluster, `dc1` on 127.0.0.1 and `dc2` on
127.0.0.2 (tests/services.py `TwoDatacenterCql`), one keyspace with a replica in each
(NetworkTopologyStrategy dc1=1, dc2=1), and one `ScyllaStorage` per datacenter as each
region's `chatplane up` opens it (`local_dc`: its own datacenter's coordinators).

- A home is decided once for the whole keyspace: `offer_home` runs its Paxos round at
  `SERIAL` (every datacenter's replicas), whatever `cql_serial_consistency` says, so two
  regions offering at once get one answer. At `LOCAL_SERIAL` each datacenter's replica
  decides alone and both regions may be told they hold the home.
- What the database replicates: the message, inbox and member rows a region writes at
  `LOCAL_QUORUM` are read from the other datacenter's replica once Cassandra has copied
  them (no link involved).
- `sync` on CQL writes at `EACH_QUORUM` (`cql_write_consistency`): a write returns only
  once the other datacenter holds it, so with that datacenter frozen it fails (and a
  `LOCAL_QUORUM` write does not), and once it is back the write is readable there at once.
  A refused write's resend, answered as a duplicate, is acked only once its original's
  rows are written again at `EACH_QUORUM`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from chatplane.storage.base import (
    CONVERSATION_HOME,
    Home,
    SendRequest,
    Storage,
    StorageUnavailable,
)
from tests.services import TwoDatacenterCql

pytestmark = pytest.mark.cql

REPLICATION = {"class": "NetworkTopologyStrategy", "dc1": "1", "dc2": "1"}


def _settings(cluster: TwoDatacenterCql, dc: str, keyspace: str, **overrides: Any) -> Any:
    from chatplane.storage.cql import CqlSettings

    address = dict(cluster.DATACENTERS)[dc]
    options: dict[str, Any] = {"hosts": (address,), "port": cluster.port, "keyspace": keyspace,
                               "local_dc": dc, "replication": REPLICATION,
                               "request_timeout_s": 10.0}
    options.update(overrides)
    return CqlSettings(**options)


@pytest.fixture
async def regions(two_dc: TwoDatacenterCql) -> AsyncIterator[tuple[Storage, Storage]]:
    """(dc1's store, dc2's store) on a fresh keyspace."""
    import uuid

    from chatplane.storage import migrations
    from chatplane.storage.scylla import ScyllaStorage

    keyspace = f"t_{uuid.uuid4().hex[:16]}"
    await migrations.migrate(_settings(two_dc, "dc1", keyspace))
    stores = [ScyllaStorage(_settings(two_dc, dc, keyspace), sole_writer=True)
              for dc in ("dc1", "dc2")]
    for store in stores:
        await store.open()
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()


async def test_the_keyspace_has_a_replica_in_each_datacenter(
        regions: tuple[Storage, Storage]) -> None:
    from chatplane.storage.scylla import ScyllaStorage

    eu, us = regions
    assert isinstance(eu, ScyllaStorage) and isinstance(us, ScyllaStorage)
    assert eu.store_id == us.store_id  # one keyspace, not two stores


async def test_two_regions_offering_a_home_at_once_get_one_answer(
        regions: tuple[Storage, Storage]) -> None:
    """Each region offers itself, confirmed, for the same chats at the same moment:
    a confirmed row yields to nothing but a higher epoch, so exactly one offer may
    win per chat and both regions must be told the same winner. (A race: at
    LOCAL_SERIAL it split 29 of 40 chats in one run and none of 20 in another; the
    test below shows the difference every time.)"""
    eu, us = regions
    keys = [f"d:a{i}:b{i}" for i in range(20)]
    answers = await asyncio.gather(*(
        asyncio.gather(_offer(eu, key, Home("eu", 1, True)), _offer(us, key, Home("us", 1, True)))
        for key in keys))
    split = [key for key, (in_eu, in_us) in zip(keys, answers, strict=True) if in_eu != in_us]
    assert split == [], f"both regions told they hold the home of {len(split)} chats"
    for key, (winner, _) in zip(keys, answers, strict=True):
        assert await eu.home(CONVERSATION_HOME, key) == winner
        assert await us.home(CONVERSATION_HOME, key) == winner


async def test_no_home_is_placed_while_the_other_datacenter_is_away(
        two_dc: TwoDatacenterCql, regions: tuple[Storage, Storage]) -> None:
    """The deterministic form of the race above: with dc2 frozen (SIGSTOP), dc1's offer
    cannot complete (a SERIAL round needs dc2's replica too), so dc1 never believes in a
    home dc2 has not seen; at LOCAL_SERIAL dc1 placed it alone. Once dc2 is back the
    offer goes through and both datacenters read the same row."""
    eu, us = regions
    key = "d:away:home"
    os.kill(two_dc.pid("dc2"), signal.SIGSTOP)
    try:
        with pytest.raises(StorageUnavailable):
            await asyncio.wait_for(eu.offer_home(CONVERSATION_HOME, key, Home("eu", 1, True)),
                                   30.0)
    finally:
        os.kill(two_dc.pid("dc2"), signal.SIGCONT)
    deadline = time.monotonic() + 30.0
    while True:
        try:
            placed = await eu.offer_home(CONVERSATION_HOME, key, Home("eu", 1, True))
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline, "dc2 never answered again"
            await asyncio.sleep(0.5)
    assert placed == Home("eu", 1, True)
    assert await us.home(CONVERSATION_HOME, key) == placed


async def _offer(store: Storage, key: str, home: Home) -> Home:
    """offer_home as a region uses it: a Paxos round that timed out (contention, a
    slow replica) has an unknown outcome and is offered again (the send that needed
    the home fails UNAVAILABLE and the client resends); offering again is safe, the
    answer is the row the compare-and-set found."""
    for _ in range(5):
        try:
            return await store.offer_home(CONVERSATION_HOME, key, home)
        except StorageUnavailable:
            await asyncio.sleep(0.2)
    return await store.offer_home(CONVERSATION_HOME, key, home)


async def test_rows_written_in_one_datacenter_are_read_in_the_other(
        regions: tuple[Storage, Storage]) -> None:
    """What the database replicates: the message, its inbox entries and the members."""
    eu, us = regions
    conversation = await eu.ensure_direct("alice", "bob", 1)
    request = SendRequest(conversation.conversation_id, "alice", "phone", 1, "hello",
                          "m-1", 2)
    result = await eu.append(request, ["alice", "bob"])
    deadline = time.monotonic() + 10.0
    while not await us.history(conversation.conversation_id):
        assert time.monotonic() < deadline, "the message never reached dc2"
        await asyncio.sleep(0.05)
    [copied] = await us.history(conversation.conversation_id)
    assert (copied.seq, copied.text, copied.sender) == (result.message.seq, "hello", "alice")
    [entry] = await us.inbox("bob", 0, 10)
    assert (entry.message.conversation_id, entry.message.seq) == (
        conversation.conversation_id, copied.seq)
    again = await us.conversation(conversation.conversation_id)
    assert again is not None and sorted(again.members) == ["alice", "bob"]


@pytest.fixture
async def keyspace(two_dc: TwoDatacenterCql) -> str:
    import uuid

    from chatplane.storage import migrations

    name = f"t_{uuid.uuid4().hex[:16]}"
    await migrations.migrate(_settings(two_dc, "dc1", name))
    return name


async def test_sync_writes_wait_for_the_other_datacenter(
        two_dc: TwoDatacenterCql, keyspace: str) -> None:
    from chatplane.storage.scylla import ScyllaStorage

    local = ScyllaStorage(_settings(two_dc, "dc1", keyspace, request_timeout_s=5.0),
                          sole_writer=True)
    each = ScyllaStorage(_settings(two_dc, "dc1", keyspace, request_timeout_s=5.0,
                                   write_consistency="EACH_QUORUM"), sole_writer=True)
    remote = ScyllaStorage(_settings(two_dc, "dc2", keyspace), sole_writer=True)
    for store in (local, each, remote):
        await store.open()
    try:
        # one conversation per store: each is its conversation's only sequencer
        async_chat = await local.ensure_direct("alice", "bob", 1)
        sync_chat = await each.ensure_direct("carol", "dave", 1)
        sync_send = SendRequest(sync_chat.conversation_id, "carol", "phone", 1, "sync", "m-s", 2)
        os.kill(two_dc.pid("dc2"), signal.SIGSTOP)
        try:
            await asyncio.wait_for(local.append(SendRequest(
                async_chat.conversation_id, "alice", "phone", 1, "async", "m-a", 2),
                ["alice", "bob"]), 20.0)
            with pytest.raises(StorageUnavailable):
                await asyncio.wait_for(each.append(sync_send, ["carol", "dave"]), 30.0)
        finally:
            os.kill(two_dc.pid("dc2"), signal.SIGCONT)
        # back: a new send returns once dc2 holds it, so dc2 reads it at once (the
        # resend of the refused one: the next test)
        later = SendRequest(sync_chat.conversation_id, "carol", "phone", 2, "sync 2", "m-2", 3)
        deadline = time.monotonic() + 30.0
        while True:
            try:
                result = await each.append(later, ["carol", "dave"])
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline, "dc2 never took writes again"
                await asyncio.sleep(0.5)
        copied = [m for m in await remote.history(sync_chat.conversation_id)
                  if m.seq == result.message.seq]
        assert [m.text for m in copied] == ["sync 2"]
    finally:
        for store in (local, each, remote):
            await store.close()


async def test_a_sync_duplicate_is_acked_once_the_other_datacenter_holds_it(
        two_dc: TwoDatacenterCql, keyspace: str) -> None:
    """An append refused at EACH_QUORUM (dc2 frozen) after its rows landed in dc1: the
    resend finds it there (a duplicate), and its ack comes only once its rows are
    written again at EACH_QUORUM, so dc2, read at LOCAL_ONE right after the ack, holds
    the message, its send log entry and the recipient's inbox entry. (Before, the
    duplicate was answered from dc1's copy at once: dc2 held only the cells written
    after it was back, the message with no text and no inbox entry, since the test
    nodes run without hinted handoff.) The take that finished it told the region's
    notices of it once (`serve_users`' `recovered`), before the resend's answer."""
    from chatplane.storage.scylla import ScyllaStorage

    each = ScyllaStorage(_settings(two_dc, "dc1", keyspace, request_timeout_s=5.0,
                                   write_consistency="EACH_QUORUM"), sole_writer=True)
    remote = ScyllaStorage(_settings(two_dc, "dc2", keyspace, consistency="LOCAL_ONE"),
                           sole_writer=True)
    told: list[tuple[int, list[str]]] = []

    async def everyone(users: Sequence[str]) -> list[str]:
        return list(users)

    each.serve_users(everyone, lambda message, _, here: told.append((message.seq, list(here))))
    for store in (each, remote):
        await store.open()
    try:
        chat = await each.ensure_direct("erin", "frank", 1)
        send = SendRequest(chat.conversation_id, "erin", "phone", 1, "kept", "m-k", 2)
        os.kill(two_dc.pid("dc2"), signal.SIGSTOP)
        try:  # at once: dc2 is not marked down yet, so dc1 takes the rows and times out
            with pytest.raises(StorageUnavailable):
                await asyncio.wait_for(each.append(send, ["erin", "frank"]), 30.0)
        finally:
            os.kill(two_dc.pid("dc2"), signal.SIGCONT)
        deadline = time.monotonic() + 30.0
        while True:  # the client's resend, until dc2 takes writes again
            try:
                result = await each.append(send, ["erin", "frank"])
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline, "dc2 never took writes again"
                await asyncio.sleep(0.5)
        assert result.duplicate, "the refused append left no rows in dc1 (not the case tested)"
        # (a write re-sent after a lost answer repeats a list's elements: set)
        assert [(seq, sorted(set(here))) for seq, here in told] == [
            (result.message.seq, ["erin", "frank"])]
        copied = [m for m in await remote.history(chat.conversation_id)
                  if m.seq == result.message.seq]
        assert [(m.text, m.message_id, m.cid) for m in copied] == [("kept", "m-k", 1)]
        entries = [(e.message.conversation_id, e.message.seq)
                   for e in await remote.inbox("frank", 0, 10)]
        assert entries == [(chat.conversation_id, result.message.seq)]
        _, _, heads = remote._parts()
        logged = await heads.find_send(send)  # dc2's send log names it
        assert logged is not None and logged.seq == result.message.seq
    finally:
        for store in (each, remote):
            await store.close()


def test_the_cluster_is_two_processes(two_dc: TwoDatacenterCql, tmp_path: Path) -> None:
    """The nodes answer on their own addresses (nothing of the shared test node)."""
    import socket

    for address in two_dc.hosts:
        with socket.create_connection((address, two_dc.port), timeout=2.0):
            pass
