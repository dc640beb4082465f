"""The cold tier: archived history reads back exactly as it was, on both backends.

A property test draws a conversation (message count, bodies, payloads), an
archive boundary (how many of the oldest messages are past the threshold)
and a segment size, records every read a client can make (history pages in
both directions, inbox walks in small pages) before archiving, archives, and
asserts that the same reads return the same messages afterwards, while the
backend itself now holds stubs for the archived seqs. Runs against SQLite
and, marked `cql`, the real CQL server; with segments in a directory and,
marked `s3`, in a bucket of a real S3-compatible server (S3Proxy).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatplane.settings import Archive
from chatplane.storage.archive import DAY_MS, EXPIRED_TYPE, ArchivedStorage, Archiver
from chatplane.storage.archive_rows import ArchiveRows, CqlRows, SqliteRows, is_stub
from chatplane.storage.archive_segments import DirSegments, SegmentStore
from chatplane.storage.base import SendRequest, Storage, StoredMessage
from tests.storage.conftest import give_back_keyspace, scylla_settings, take_keyspace

NOW = 1_700_000_000_000
Opener = Callable[[], Awaitable[tuple[Storage, ArchiveRows]]]
StoreMaker = Callable[[str], SegmentStore]  # a fresh, empty place for segments, by tag


@pytest.fixture(params=["dir", pytest.param("s3", marks=pytest.mark.s3)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    if request.param == "dir":
        return lambda tag: DirSegments(tmp_path / f"archive-{tag}")
    s3_server = request.getfixturevalue("s3_server")
    return lambda tag: s3_server.segments(prefix=f"test-{tag}/")


@pytest.fixture(params=["sqlite", pytest.param("scylla", marks=pytest.mark.cql)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens (backend, rows) on one database, in whatever event loop runs it."""
    if request.param == "sqlite":
        from chatplane.storage.sqlite import SqliteStorage

        async def open_sqlite() -> tuple[Storage, ArchiveRows]:
            storage = SqliteStorage(tmp_path / "chat.db")
            await storage.open()
            return storage, SqliteRows(tmp_path / "chat.db")

        yield open_sqlite
        return
    from chatplane.storage.scylla import ScyllaStorage

    cql_server = request.getfixturevalue("cql_server")
    keyspace = asyncio.run(take_keyspace(cql_server))
    cql = scylla_settings(cql_server, keyspace)

    async def open_scylla() -> tuple[Storage, ArchiveRows]:
        storage = ScyllaStorage(cql)
        await storage.open()
        return storage, CqlRows(cql)

    yield open_scylla
    asyncio.run(give_back_keyspace(cql_server, keyspace))


def send(conversation_id: str, sender: str, i: int, text: str, payload: bytes) -> SendRequest:
    return SendRequest(conversation_id=conversation_id, sender=sender, sender_device="phone",
                       cid=i, text=text, message_id=f"m-{conversation_id}-{i}",
                       sent_at_ms=NOW + i * 1000, payload=payload)


async def reads(storage: Storage, conversation_id: str, users: tuple[str, str], n: int,
                queries: list[tuple[int, int, int]], page: int) -> list[Any]:
    """Every read the test compares: history both ways, and inbox walks."""
    out: list[Any] = []
    for after, before, limit in queries:
        out.append(await storage.history(conversation_id, after_seq=after,
                                         before_seq=before or None, limit=limit))
        out.append(await storage.history(conversation_id, before_seq=before or None,
                                         limit=limit))
    for user in users:  # a device syncing its inbox from 0 in small pages
        cursor, walked = 0, []
        while True:
            items = await storage.inbox(user, cursor, page)
            if not items:
                break
            walked += [(i.inbox_seq, i.message) for i in items]
            cursor = items[-1].inbox_seq
        out.append(walked)
    out.append(await storage.history(conversation_id, after_seq=0, limit=n + 5))
    return out


messages_strategy = st.lists(st.tuples(st.text(max_size=40), st.binary(max_size=24)),
                             min_size=2, max_size=24)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(bodies=messages_strategy, data=st.data())
def test_archived_history_reads_exactly_as_before(opener: Opener, make_store: StoreMaker,
                                                   bodies: list[tuple[str, bytes]],
                                                   data: st.DataObject) -> None:
    n = len(bodies)
    old = data.draw(st.integers(0, n), label="messages past the threshold")
    size = data.draw(st.integers(1, 7), label="messages per segment")
    page = data.draw(st.integers(1, 5), label="inbox page")
    queries = data.draw(st.lists(st.tuples(st.integers(0, n + 1), st.integers(0, n + 2),
                                           st.integers(1, n + 2)), min_size=1, max_size=6))
    tag = uuid.uuid4().hex[:8]
    users = (f"a{tag}", f"b{tag}")
    store = make_store(tag)

    async def scenario() -> None:
        storage, rows = await opener()
        try:
            conversation = await storage.ensure_direct(*users, NOW)
            cid = conversation.conversation_id
            for i, (text, payload) in enumerate(bodies, 1):
                await storage.append(send(cid, users[i % 2], i, text, payload), users)
            before = await reads(storage, cid, users, n, queries, page)
            # the threshold falls right after the `old` oldest messages
            config = Archive(archive_after_days=1, archive_segment_messages=size)
            archived = ArchivedStorage(storage, store)
            archiver = Archiver(archived, rows, store, config)
            report = await archiver.run_once(now_ms=NOW + old * 1000 + 500 + DAY_MS)
            stubs = [m.seq for m in await storage.history(cid, after_seq=0, limit=n + 5)
                     if is_stub(m)]
            expected = list(range(1, min(old, n - 1) + 1))  # never the newest
            assert stubs == expected and report.messages >= len(expected)
            assert await reads(archived, cid, users, n, queries, page) == before
            again = await archiver.run_once(now_ms=NOW + old * 1000 + 500 + DAY_MS)
            assert again.segments == 0  # nothing archived twice
            fresh = ArchivedStorage(storage, store)  # another process: no cached segments
            assert await reads(fresh, cid, users, n, queries, page) == before
        finally:
            await rows.close()
            await store.close()
            await storage.close()

    asyncio.run(scenario())


def test_retention_leaves_tombstones_in_place(tmp_path: Path, make_store: StoreMaker) -> None:
    from chatplane.storage.sqlite import SqliteStorage

    async def scenario() -> list[StoredMessage]:
        storage = SqliteStorage(tmp_path / "chat.db")
        await storage.open()
        rows = SqliteRows(tmp_path / "chat.db")
        store = make_store(uuid.uuid4().hex[:8])
        try:
            cid = (await storage.ensure_direct("a", "b", NOW)).conversation_id
            for i in range(1, 11):
                await storage.append(send(cid, "a", i, f"t{i}", b""), ("a", "b"))
            archived = ArchivedStorage(storage, store)
            config = Archive(archive_after_days=1, archive_segment_messages=3,
                             retention_days_direct=2)
            archiver = Archiver(archived, rows, store, config)
            # day 1 past message 6: 1..6 archived; day 2 past message 3: 1..3 expire
            await archiver.run_once(now_ms=NOW + 6_500 + DAY_MS)
            report = await archiver.run_once(now_ms=NOW + 3_500 + 2 * DAY_MS)
            assert report.expired == 3
            return await archived.history(cid, after_seq=0, limit=20)
        finally:
            await store.close()
            await storage.close()

    got = asyncio.run(scenario())
    assert [m.seq for m in got] == list(range(1, 11))
    assert [m.content_type == EXPIRED_TYPE for m in got] == [True] * 3 + [False] * 7
    assert [m.text for m in got[3:]] == [f"t{i}" for i in range(4, 11)]
    assert all(not m.text for m in got[:3])


@pytest.mark.s3
async def test_s3_requests_are_signed_and_a_wrong_key_is_refused(s3_server: Any) -> None:
    """S3Proxy checks every signature: the right keys work, a wrong secret
    is a retriable StorageUnavailable (never a silent miss), and listing
    pages through more keys than one page holds."""
    from chatplane.storage.archive_s3 import S3Segments
    from chatplane.storage.base import StorageUnavailable

    good = s3_server.segments(prefix=f"sig-{uuid.uuid4().hex[:8]}/")
    bad = S3Segments(s3_server.endpoint, s3_server.bucket, access_key=s3_server.access_key,
                     secret_key="not-the-secret", prefix=good.prefix)
    try:
        names = [f"seg/ab/{i:03d}" for i in range(1, 1101)]  # above S3's 1,000 per page
        await asyncio.gather(*(good.put(n, n.encode()) for n in names[:20]))
        for n in names[20:]:
            await good.put(n, b"")
        assert sorted(await good.names("seg/ab/")) == sorted(names)
        assert await good.get(names[0]) == names[0].encode()
        assert await good.get("seg/ab/none") is None
        await good.delete(names[0])
        assert await good.get(names[0]) is None
        with pytest.raises(StorageUnavailable, match="403"):
            await bad.put("seg/ab/x", b"x")
        with pytest.raises(StorageUnavailable):
            await bad.names("seg/")
    finally:
        await good.close()
        await bad.close()
