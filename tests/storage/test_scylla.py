"""What only the ScyllaDB backend has: migrations, configuration errors, many
writers on one conversation, recovery of a half-done append, storage faults.

All on the real CQL server of tests/services.py (marked `cql`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

pytest.importorskip("cassandra")

from chatplane.storage import cql, migrations
from chatplane.storage.base import (
    StorageError,
    StorageUnavailable,
    direct_conversation_id,
)
from chatplane.storage.scylla import ScyllaStorage
from tests.services import CqlService, free_port
from tests.storage.conftest import drop_keyspace, new_keyspace, scylla_settings
from tests.storage.test_conformance import NOW, send

pytestmark = pytest.mark.cql


@pytest.fixture
async def keyspace(cql_server: CqlService) -> AsyncIterator[str]:
    name = new_keyspace()
    yield name
    await drop_keyspace(cql_server, name)


async def opened(settings: cql.CqlSettings) -> ScyllaStorage:
    storage = ScyllaStorage(settings)
    await storage.open()
    return storage


# -- migrations and configuration --------------------------------------------

async def test_migrate_is_versioned_and_idempotent(cql_server: CqlService, keyspace: str) -> None:
    settings = scylla_settings(cql_server, keyspace)
    assert await migrations.migrate(settings) == [m.version for m in migrations.MIGRATIONS]
    assert await migrations.migrate(settings) == []
    db = await cql.connect(settings)
    try:
        rows = await db.run(f"SELECT version FROM {keyspace}.schema_migrations")
        assert sorted(r["version"] for r in rows) == [m.version for m in migrations.MIGRATIONS]
        meta = {r["key"]: r["value"] for r in await db.run(f"SELECT * FROM {keyspace}.meta")}
        assert meta["message_bucket"] == "4" and meta["inbox_bucket"] == "4"
    finally:
        await db.close()
    # Bucket sizes are fixed at creation: a later migrate with others keeps them.
    await migrations.migrate(scylla_settings(cql_server, keyspace, message_bucket=1000))
    storage = await opened(scylla_settings(cql_server, keyspace))
    try:
        assert storage._heads is not None and storage._heads.message_bucket == 4
    finally:
        await storage.close()


async def test_replication_is_configurable(cql_server: CqlService, keyspace: str) -> None:
    async def replication() -> dict[str, str]:
        db = await cql.connect(scylla_settings(cql_server, keyspace))
        try:
            rows = await db.run("SELECT replication FROM system_schema.keyspaces "
                                "WHERE keyspace_name = %s", (keyspace,))
            return dict(rows[0]["replication"])
        finally:
            await db.close()

    await migrations.migrate(scylla_settings(cql_server, keyspace))
    assert (await replication())["class"].endswith("SimpleStrategy")
    # SimpleSnitch names its one datacenter "datacenter1".
    nts = cql.parse_replication("datacenter1=1")
    assert nts == {"class": "NetworkTopologyStrategy", "datacenter1": "1"}
    assert await migrations.migrate(scylla_settings(cql_server, keyspace, replication=nts)) == []
    current = await replication()
    assert current["class"].endswith("NetworkTopologyStrategy")
    assert current["datacenter1"] == "1"
    assert cql.parse_replication("3") == {"class": "SimpleStrategy", "replication_factor": "3"}
    with pytest.raises(StorageError, match="bad replication"):
        cql.parse_replication("dc1:3")


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


async def test_open_without_schema_says_to_migrate(cql_server: CqlService,
                                                   keyspace: str) -> None:
    with pytest.raises(StorageError) as caught:
        await opened(scylla_settings(cql_server, keyspace))
    assert "does not exist" in one_line(caught.value)
    assert "chatplane storage migrate" in str(caught.value)


async def test_unreachable_hosts_fail_fast_with_one_line(keyspace: str) -> None:
    port = free_port()  # nothing listens there
    settings = cql.CqlSettings(hosts=("127.0.0.1",), port=port, keyspace=keyspace,
                               connect_timeout_s=2.0)
    began = time.monotonic()
    with pytest.raises(StorageError) as caught:
        await opened(settings)
    assert time.monotonic() - began < 20
    assert f"cannot reach CQL hosts 127.0.0.1:{port} (" in one_line(caught.value)
    with pytest.raises(StorageError) as caught:
        await migrations.migrate(settings)
    assert "cannot reach" in one_line(caught.value)
    with pytest.raises(StorageError) as caught:
        await opened(cql.CqlSettings(hosts=("no-such-host.invalid",), keyspace=keyspace))
    assert "cannot resolve any of the CQL hosts no-such-host.invalid:9042" == one_line(
        caught.value)


async def test_bad_settings_are_storage_errors(cql_server: CqlService, keyspace: str) -> None:
    with pytest.raises(StorageError, match="unknown CQL consistency 'QUORUMISH'"):
        await opened(scylla_settings(cql_server, keyspace, consistency="QUORUMISH"))
    with pytest.raises(StorageError, match="serial consistency"):
        await opened(scylla_settings(cql_server, keyspace, serial_consistency="ONE"))
    with pytest.raises(StorageError, match="bad keyspace name"):
        await migrations.migrate(scylla_settings(cql_server, "no-dashes; DROP"))
    with pytest.raises(StorageError, match="no CQL hosts"):
        cql.CqlSettings.parse(" , ")
    parsed = cql.CqlSettings.parse("10.0.0.1, 10.0.0.2:9043", keyspace="k")
    assert (parsed.hosts, parsed.port, parsed.keyspace) == (("10.0.0.1", "10.0.0.2"), 9043, "k")


# -- many writers, recovery, faults ---------------------------------------------

async def test_two_instances_on_one_conversation_never_share_a_seq(
        cql_server: CqlService, keyspace: str) -> None:
    """Two processes sequencing one conversation (a lease overlap): the
    conditional claims keep seqs contiguous and unique, inboxes too."""
    settings = scylla_settings(cql_server, keyspace)
    await migrations.migrate(settings)
    a, b = await opened(settings), await opened(settings)
    try:
        conv = (await a.ensure_direct("alice", "bob", NOW)).conversation_id
        jobs = [(a if n % 2 else b).append(send(conv, "alice" if n % 2 else "bob", n),
                                           ["alice", "bob"]) for n in range(1, 25)]
        results = await asyncio.gather(*jobs)
        assert sorted(r.message.seq for r in results) == list(range(1, 25))
        for user in ("alice", "bob"):
            inbox = await a.inbox(user, 0, 100)
            assert [i.inbox_seq for i in inbox] == list(range(1, 25))
            assert sorted(i.message.seq for i in inbox) == list(range(1, 25))
        assert await b.history(conv, limit=100) == await a.history(conv, limit=100)
    finally:
        await a.close()
        await b.close()


async def test_a_half_done_append_is_finished_by_the_next_writer(
        cql_server: CqlService, keyspace: str) -> None:
    """A process that died after claiming seq 2 (and one inbox entry) but
    before its send log and the rest of the fan-out: a new instance finishes
    it once, and the client's resend gets the original."""
    settings = scylla_settings(cql_server, keyspace)
    await migrations.migrate(settings)
    first = await opened(settings)
    conv = (await first.ensure_direct("alice", "bob", NOW)).conversation_id
    await first.append(send(conv, "alice", 1), ["alice", "bob"])
    await first.close()

    db = await cql.connect(settings)
    try:
        await db.run(
            f"INSERT INTO {keyspace}.messages (conversation_id, bucket, seq, message_id, sender,"
            " sender_device, cid, text, sent_at_ms, payload, content_type, recipients,"
            " appended_at_ms) VALUES (%s, 0, 2, 'm-alice-phone-2', 'alice', 'phone', 2,"
            " 'alice/phone#2', %s, 0x, 'text', ['alice', 'bob'], %s)",
            (conv, NOW + 2, int(time.time() * 1000)))
        await db.run(f"INSERT INTO {keyspace}.inbox (user_id, bucket, inbox_seq,"
                     " conversation_id, seq, added_at_ms) VALUES ('alice', 0, 2, %s, 2, %s)",
                     (conv, int(time.time() * 1000)))
    finally:
        await db.close()

    second = await opened(settings)
    try:
        resend = await second.append(send(conv, "alice", 2), ["alice", "bob"])
        assert resend.duplicate and resend.message.seq == 2
        for user in ("alice", "bob"):
            inbox = await second.inbox(user, 0, 100)
            assert [(i.inbox_seq, i.message.seq) for i in inbox] == [(1, 1), (2, 2)], user
        nxt = await second.append(send(conv, "bob", 1), ["alice", "bob"])
        assert nxt.message.seq == 3 and [i.inbox_seq for i in nxt.inbox] == [3, 3]
    finally:
        await second.close()


@pytest.mark.slow
async def test_storage_fault_fails_sends_then_recovers(cql_server: CqlService,
                                                       keyspace: str) -> None:
    """CQL server stopped mid-traffic: sends raise StorageUnavailable (never a
    false success); when it is back, the same instance resumes, no seq lost or
    reused."""
    if cql_server.external:
        pytest.skip("cannot stop an external CQL cluster")
    settings = scylla_settings(cql_server, keyspace, request_timeout_s=3.0)
    await migrations.migrate(settings)
    storage = await opened(settings)
    try:
        conv = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
        acked = [await storage.append(send(conv, "alice", n), ["bob"]) for n in (1, 2, 3)]
        cql_server.kill()
        failed = 0
        for n in (4, 5):
            with pytest.raises(StorageUnavailable):
                await asyncio.wait_for(storage.append(send(conv, "alice", n), ["bob"]), 30)
            failed += 1
        assert failed == 2
        await asyncio.to_thread(cql_server.start)
        deadline = time.monotonic() + 60
        while True:  # the driver reconnects on its own schedule
            try:
                retry = await storage.append(send(conv, "alice", 4), ["bob"])
                break
            except StorageUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert retry.message.seq == 4 and not retry.duplicate
        history = await storage.history(conv)
        assert [m.seq for m in history] == [1, 2, 3, 4]
        assert history[:3] == [r.message for r in acked]
        assert [i.message.seq for i in await storage.inbox("bob", 0, 10)] == [1, 2, 3, 4]
    finally:
        await storage.close()
        # the CQL server is shared by the session: never leave it killed
        await asyncio.to_thread(cql_server.start)


def test_direct_ids_match_base() -> None:
    assert direct_conversation_id("b", "a") == "d:a:b"


class LostResponses:
    """Fault injection at the CQL session: run the statement for real, then
    lose the answer (raise StorageUnavailable) for the first `times` runs of
    statements whose text contains `marker`, as a timeout after the write
    landed would."""

    def __init__(self, storage: ScyllaStorage, marker: str, times: int) -> None:
        assert storage._db is not None
        self.db, self.marker, self.left = storage._db, marker, times
        self.real = storage._db.run
        self.db.run = self.run  # type: ignore[method-assign]

    async def run(self, statement: object, params: object = None, **kwargs: object) -> list:
        rows = await self.real(statement, params, **kwargs)  # type: ignore[arg-type]
        # a batch's statements count as its text: its answer is theirs
        text = getattr(statement, "query_string", getattr(statement, "chatplane_queries",
                                                          statement))
        if self.left > 0 and isinstance(text, str) and self.marker in text:
            self.left -= 1
            raise StorageUnavailable("injected: response lost")
        return rows


async def test_lost_claim_answers_never_make_a_second_message(
        cql_server: CqlService, keyspace: str) -> None:
    settings = scylla_settings(cql_server, keyspace)
    await migrations.migrate(settings)
    storage = await opened(settings)
    try:
        conv = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
        lost_claim = LostResponses(storage, "INTO " + keyspace + ".messages", 1)
        lost_inbox = LostResponses(storage, "INTO " + keyspace + ".inbox ", 2)
        result = await storage.append(send(conv, "alice", 1), ["alice", "bob"])
        assert lost_claim.left == lost_inbox.left == 0, "the faults were injected"
        assert (result.message.seq, result.duplicate) == (1, False)
        assert [i.inbox_seq for i in result.inbox] == [1, 1]
        assert [m.seq for m in await storage.history(conv)] == [1]
        for user in ("alice", "bob"):
            assert [i.inbox_seq for i in await storage.inbox(user, 0, 10)] == [1]
        nxt = await storage.append(send(conv, "alice", 2), ["alice", "bob"])
        assert nxt.message.seq == 2 and [i.inbox_seq for i in nxt.inbox] == [2, 2]
    finally:
        await storage.close()


async def test_a_failed_append_is_finished_by_the_resend(cql_server: CqlService,
                                                         keyspace: str) -> None:
    """The send log write's answer is lost after the message and one inbox
    entry landed: the append fails (no ack), the resend returns the original
    and every recipient has it exactly once."""
    settings = scylla_settings(cql_server, keyspace)
    await migrations.migrate(settings)
    storage = await opened(settings)
    try:
        conv = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
        # the backend re-sends a batch whose answer was lost a few times: lose
        # more answers than that, so the append fails
        lost = LostResponses(storage, "INTO " + keyspace + ".sends", 3)
        with pytest.raises(StorageUnavailable):
            await storage.append(send(conv, "alice", 1), ["alice", "bob"])
        assert lost.left == 0
        again = await storage.append(send(conv, "alice", 1), ["alice", "bob"])
        assert (again.message.seq, again.duplicate) == (1, True)
        for user in ("alice", "bob"):
            assert [(i.inbox_seq, i.message.cid) for i in await storage.inbox(user, 0, 10)] == [
                (1, 1)]
        nxt = await storage.append(send(conv, "bob", 1), ["alice", "bob"])
        assert nxt.message.seq == 2 and [i.inbox_seq for i in nxt.inbox] == [2, 2]
    finally:
        await storage.close()


async def test_writes_made_meanwhile_share_requests(cql_server: CqlService,
                                                    keyspace: str) -> None:
    """`CqlSession.write`: writes made while others are on the wire go out
    together (fewer requests than callers, none over the batch limit), every
    caller's rows land, and a combined request that fails fails each caller
    in it (none is told its rows landed)."""
    settings = scylla_settings(cql_server, keyspace)
    await migrations.migrate(settings)
    storage = await opened(settings)
    try:
        db, st = storage._db, storage._st
        assert db is not None and st is not None
        before = db.stats.requests["batch"]
        await asyncio.gather(*(db.write([(st.set_read, (i, i, f"d:c{i}", user))
                                         for user in ("u", "v")]) for i in range(1, 201)))
        requests = db.stats.requests["batch"] - before
        # 400 statements: never more than BATCH_MAX in one request
        assert -(-400 // cql.BATCH_MAX) <= requests < 200, requests
        for i in (1, 77, 200):
            for user in ("u", "v"):
                rows = await db.run(st.select_read, (f"d:c{i}", user))
                assert rows == [{"read_seq": i}]
        # a write whose values do not bind fails its combined request: the
        # callers sharing it are told so too, and none of their rows is claimed
        good = [db.write([(st.set_read, (9, 9, f"d:x{i}", "u"))]) for i in range(3)]
        bad = db.write([(st.set_read, ("not a number", 9, "d:x9", "u"))])
        outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
        assert isinstance(outcomes[-1], Exception), outcomes
        assert all(isinstance(o, Exception) for o in outcomes), outcomes
        await db.write([(st.set_read, (9, 9, "d:x0", "u"))])  # the next write goes through
        assert await db.run(st.select_read, ("d:x0", "u")) == [{"read_seq": 9}]
    finally:
        await storage.close()

