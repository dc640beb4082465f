"""Rules of the CQL backend that need no server: settings parsing, the retry
policy's decisions, replication clauses, group-change encoding, buckets."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

pytest.importorskip("cassandra")

from cassandra import ConsistencyLevel, WriteType
from cassandra.policies import RetryPolicy
from cassandra.query import SimpleStatement

from chatplane.storage import cql, migrations
from chatplane.storage.base import MEMBER, OWNER, MembershipChange, StorageError
from chatplane.storage.scylla_social import decode_change, encode_change, members_after


def test_retry_policy_never_resends_a_write() -> None:
    policy = cql.NoBlindWriteRetries()
    write = SimpleStatement("INSERT ...", is_idempotent=False)
    assert policy.on_write_timeout(write, ConsistencyLevel.LOCAL_QUORUM, WriteType.CAS,
                                   2, 1, 0) == (RetryPolicy.RETHROW, None)
    assert policy.on_write_timeout(write, ConsistencyLevel.LOCAL_QUORUM, WriteType.SIMPLE,
                                   2, 1, 0) == (RetryPolicy.RETHROW, None)
    assert policy.on_request_error(write, ConsistencyLevel.LOCAL_QUORUM, OSError(), 0) == (
        RetryPolicy.RETHROW, None)
    read = SimpleStatement("SELECT ...", is_idempotent=True)
    assert policy.on_request_error(read, ConsistencyLevel.LOCAL_QUORUM, OSError(), 0) == (
        RetryPolicy.RETRY_NEXT_HOST, None)
    assert policy.on_request_error(read, ConsistencyLevel.LOCAL_QUORUM, OSError(), 1)[0] == (
        RetryPolicy.RETHROW)
    # Unavailable: the coordinator refused before writing anything.
    assert policy.on_unavailable(write, ConsistencyLevel.LOCAL_QUORUM, 2, 1, 0)[0] == (
        RetryPolicy.RETRY_NEXT_HOST)
    assert policy.on_unavailable(write, ConsistencyLevel.LOCAL_QUORUM, 2, 1, 1)[0] == (
        RetryPolicy.RETHROW)
    assert policy.on_read_timeout(read, ConsistencyLevel.LOCAL_QUORUM, 2, 2, False, 0)[0] == (
        RetryPolicy.RETRY)
    assert policy.on_read_timeout(read, ConsistencyLevel.LOCAL_QUORUM, 2, 1, False, 0)[0] == (
        RetryPolicy.RETHROW)


def test_settings_parsing() -> None:
    assert cql.consistency_level("local_quorum") == ConsistencyLevel.LOCAL_QUORUM
    with pytest.raises(StorageError, match="unknown CQL consistency 'FAST'"):
        cql.consistency_level("FAST")
    parsed = cql.CqlSettings.parse("a, b:19042,c", keyspace="k")
    assert (parsed.hosts, parsed.port) == (("a", "b", "c"), 19042)
    assert cql.check_keyspace_name("chat_plane1") == "chat_plane1"
    for bad in ("1abc", "a-b", "x" * 49, ""):
        with pytest.raises(StorageError):
            cql.check_keyspace_name(bad)


def test_replication_clauses() -> None:
    assert migrations.replication_clause(cql.parse_replication("3")) == (
        "{'class': 'SimpleStrategy', 'replication_factor': '3'}")
    assert migrations.replication_clause(cql.parse_replication("eu=3, us-east=2")) == (
        "{'class': 'NetworkTopologyStrategy', 'eu': '3', 'us-east': '2'}")
    with pytest.raises(StorageError, match="replication class"):
        migrations.replication_clause({"class": "LocalStrategy"})
    with pytest.raises(StorageError, match="names no factor"):
        migrations.replication_clause({"class": "SimpleStrategy"})
    assert cql.parse_replication('{"eu": 3, "us": 2}') == {
        "class": "NetworkTopologyStrategy", "eu": "3", "us": "2"}
    for bad in ('{"eu": "x"}', "{}", "{nope", "eu:3"):
        with pytest.raises(StorageError, match="bad replication"):
            cql.parse_replication(bad)
    with pytest.raises(StorageError, match="bad datacenter"):
        migrations.replication_clause({"class": "NetworkTopologyStrategy", "a'b": "1"})


def test_migrations_are_numbered_in_order() -> None:
    versions = [m.version for m in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    assert migrations.SCHEMA_VERSION == versions[-1]


def test_group_changes_round_trip() -> None:
    change = MembershipChange(create=True, name="Team", add=(("a", OWNER), ("b", MEMBER)),
                              remove=("c",), roles=(("b", "admin"),), dissolve=False)
    assert decode_change(encode_change(change)) == change
    assert decode_change(encode_change(MembershipChange())) == MembershipChange()
    assert members_after(["c", "d"], change) == ["a", "b", "d"]


async def test_gather_bounded_caps_jobs_in_flight() -> None:
    running = peak = 0

    async def job(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1
        return n

    assert await cql.gather_bounded((job(n) for n in range(50)), limit=7) == list(range(50))
    assert peak == 7


async def test_gather_bounded_cancelled_leaves_no_job_unawaited() -> None:
    """A caller's deadline cancels the jobs still queued at the gate: they are closed,
    not left for the collector to report as 'never awaited' (seen in an im pod's log)."""
    started = 0

    async def job() -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(10)

    caller = asyncio.get_running_loop().create_task(
        cql.gather_bounded((job() for _ in range(20)), limit=3))
    await asyncio.sleep(0.05)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        gc.collect()
    assert started == 3
    assert not [w for w in seen if "never awaited" in str(w.message)], seen
