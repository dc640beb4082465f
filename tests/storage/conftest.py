"""The backends the conformance suite runs against, behind one factory fixture.

`backend` is parametrised: "sqlite" (a file in tmp_path) and "scylla" (a fresh
keyspace on the real CQL server of tests/services.py, marked `cql`, with tiny
buckets so that a handful of messages crosses partition boundaries). A test
calls `await backend.open()` for an opened Storage, and may open again (after
closing, or alongside) to see the same data from a new instance, as a
restarted process would. Everything opened is closed at the end, and the
keyspace emptied for the next test (keyspaces are pooled: creating one takes
seconds); on an external cluster they are dropped when the session ends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from chatplane.storage.base import Storage
from tests.services import CqlService

if TYPE_CHECKING:  # scylla-driver is an optional dependency
    from chatplane.storage.cql import CqlSettings

SMALL_BUCKET = 4
SMALL_BLOCK = 6  # seq blocks end inside buckets and cross them


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
        "seq_block": SMALL_BLOCK,
        "request_timeout_s": 10.0,
    }
    options.update(overrides)
    return CqlSettings(**options)


def new_keyspace() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_keyspace(cql_server: CqlService, keyspace: str) -> None:
    from chatplane.storage import cql

    db = await cql.connect(scylla_settings(cql_server, keyspace))
    try:
        await db.run(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout_s=120)
    finally:
        await db.close()


# Migrated keyspaces that a finished test emptied, for the next test: creating
# one costs seconds, and hundreds of tables slow a small Cassandra down.
_free_keyspaces: list[str] = []
_pool_servers: dict[str, CqlService] = {}
_KEEP = ("meta", "schema_migrations")


@pytest.fixture(scope="session", autouse=True)
def _drop_pooled_keyspaces() -> Iterator[None]:
    """At the end, drop the pooled keyspaces from an external cluster."""
    import asyncio

    yield
    for keyspace in _free_keyspaces:
        server = _pool_servers[keyspace]
        if server.external:
            asyncio.run(drop_keyspace(server, keyspace))
    _free_keyspaces.clear()


async def take_keyspace(cql_server: CqlService) -> str:
    from chatplane.storage import migrations

    if _free_keyspaces:
        return _free_keyspaces.pop()
    keyspace = new_keyspace()
    await migrations.migrate(scylla_settings(cql_server, keyspace))
    return keyspace


async def give_back_keyspace(cql_server: CqlService, keyspace: str) -> None:
    """Empty the data tables (in parallel: about 0.2 s) and pool the keyspace;
    drop it if that fails."""
    import asyncio

    from chatplane.storage import cql
    from chatplane.storage.base import StorageError

    db = await cql.connect(scylla_settings(cql_server, keyspace))
    try:
        rows = await db.run("SELECT table_name FROM system_schema.tables "
                            "WHERE keyspace_name = %s", (keyspace,))
        await asyncio.gather(*(db.run(f"TRUNCATE {keyspace}.{row['table_name']}", timeout_s=60)
                               for row in rows if row["table_name"] not in _KEEP))
        _free_keyspaces.append(keyspace)
        _pool_servers[keyspace] = cql_server
    except StorageError:
        await db.run(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout_s=120)
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

    from chatplane.storage.scylla import ScyllaStorage

    cql_server: CqlService = request.getfixturevalue("cql_server")
    keyspace = await take_keyspace(cql_server)
    settings = scylla_settings(cql_server, keyspace)

    async def make_scylla() -> Storage:
        storage = ScyllaStorage(settings)
        await storage.open()
        return storage

    backend = Backend("scylla", make_scylla)
    yield backend
    await backend.close_all()
    await give_back_keyspace(cql_server, keyspace)


@pytest.fixture
async def storage(backend: Backend) -> Storage:
    return await backend.open()
