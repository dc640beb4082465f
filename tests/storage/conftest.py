"""The backends the conformance suite runs against, behind one factory fixture.

`backend` is parametrised: "sqlite" (a file in tmp_path) and "scylla" (a fresh
keyspace on the real CQL server of tests/services.py, marked `cql`, with tiny
buckets so that a handful of messages crosses partition boundaries). A test
calls `await backend.open()` for an opened Storage, and may open again (after
closing, or alongside) to see the same data from a new instance, as a
restarted process would. Everything opened is closed at the end (and the
keyspace dropped, on an external cluster).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chatplane.storage.base import Storage

from tests.services import CqlService

if TYPE_CHECKING:  # scylla-driver is an optional dependency
    from chatplane.storage.cql import CqlSettings

SMALL_BUCKET = 4


class Backend:
    """Opens Storage instances that share one database."""

    def __init__(self, name: str, make: Callable[[], Awaitable[Storage]]) -> None:
        self.name = name
        self._make = make
        self.opened: list[Storage] = []

    async def open(self) -> Storage:
        storage = await self._make()
        self.opened.append(storage)
        return storage

    async def close_all(self) -> None:
        for storage in self.opened:
            await storage.close()
        self.opened.clear()


def scylla_settings(cql_server: CqlService, keyspace: str, **overrides: Any) -> CqlSettings:
    from chatplane.storage.cql import CqlSettings

    options: dict[str, Any] = {
        "hosts": cql_server.hosts, "port": cql_server.port, "keyspace": keyspace,
        "message_bucket": SMALL_BUCKET, "inbox_bucket": SMALL_BUCKET,
        "request_timeout_s": 10.0,
    }
    options.update(overrides)
    return CqlSettings(**options)


def new_keyspace() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_keyspace(cql_server: CqlService, keyspace: str) -> None:
    """Drop a test keyspace from an external cluster. A server started here
    keeps them: its folder goes at the end, and a DROP costs seconds."""
    if not cql_server.external:
        return
    from chatplane.storage import cql

    db = await cql.connect(scylla_settings(cql_server, keyspace))
    try:
        await db.run(f"DROP KEYSPACE IF EXISTS {keyspace}")
    finally:
        await db.close()


@pytest.fixture(params=["sqlite", pytest.param("scylla", marks=pytest.mark.cql)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        from chatplane.storage.sqlite import SqliteStorage

        async def make_sqlite() -> Storage:
            storage = SqliteStorage(tmp_path / "chat.db")
            await storage.open()
            return storage

        backend = Backend("sqlite", make_sqlite)
        yield backend
        await backend.close_all()
        return

    from chatplane.storage import migrations
    from chatplane.storage.scylla import ScyllaStorage

    cql_server: CqlService = request.getfixturevalue("cql_server")
    keyspace = new_keyspace()
    settings = scylla_settings(cql_server, keyspace)
    await migrations.migrate(settings)

    async def make_scylla() -> Storage:
        storage = ScyllaStorage(settings)
        await storage.open()
        return storage

    backend = Backend("scylla", make_scylla)
    yield backend
    await backend.close_all()
    await drop_keyspace(cql_server, keyspace)


@pytest.fixture
async def storage(backend: Backend) -> Storage:
    return await backend.open()
