"""`chatplane storage check` against a real CQL server, as an operator runs it:
it prints the schema version, the replication map and the consistency levels,
and exits non-zero when the keyspace does not match the settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from chatplane.storage import migrations
from tests.services import CqlService
from tests.storage.conftest import drop_keyspace, new_keyspace, scylla_settings

pytestmark = pytest.mark.cql


@pytest.fixture
async def keyspace(cql_server: CqlService) -> AsyncIterator[str]:
    name = new_keyspace()
    yield name
    await drop_keyspace(cql_server, name)


async def check(cql_server: CqlService, keyspace: str, *extra: str,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "chatplane.cli", "storage", "check",
            "--cql-hosts", ",".join(cql_server.contact_points), "--keyspace", keyspace, *extra]
    return await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True,
                                   timeout=120, env={**os.environ, **(env or {})})


async def test_a_matching_keyspace_passes_and_is_described(cql_server: CqlService,
                                                           keyspace: str) -> None:
    await migrations.migrate(scylla_settings(cql_server, keyspace))
    done = await check(cql_server, keyspace,
                       env={"CHATPLANE_CQL_SERIAL_CONSISTENCY": "SERIAL"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"schema version   {migrations.SCHEMA_VERSION} " in done.stdout
    assert "replication      SimpleStrategy replication_factor=1" in done.stdout
    assert "LOCAL_QUORUM  plain writes" in done.stdout
    # the serial consistency setting is real: it is what conditional writes use
    assert "SERIAL        conditional writes" in done.stdout
    assert "MISMATCH" not in done.stdout


async def test_a_keyspace_whose_replication_differs_is_refused(cql_server: CqlService,
                                                               keyspace: str) -> None:
    await migrations.migrate(scylla_settings(cql_server, keyspace))
    done = await check(cql_server, keyspace, "--cql-replication", "dc1=3,dc2=3")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MISMATCH replication is SimpleStrategy replication_factor=1, the settings want " \
        "NetworkTopologyStrategy dc1=3, dc2=3" in done.stdout
    other_factor = await check(cql_server, keyspace, "--cql-replication", "3")
    assert other_factor.returncode == 1 and "MISMATCH replication" in other_factor.stdout


async def test_a_missing_keyspace_or_bad_serial_level_is_an_error(cql_server: CqlService,
                                                                 keyspace: str) -> None:
    missing = await check(cql_server, keyspace)
    assert missing.returncode == 2
    assert "does not exist: run `chatplane storage migrate`" in missing.stderr
    await migrations.migrate(scylla_settings(cql_server, keyspace))
    bad = await check(cql_server, keyspace, env={"CHATPLANE_CQL_SERIAL_CONSISTENCY": "QUORUM"})
    assert bad.returncode == 2
    assert "serial consistency must be SERIAL or LOCAL_SERIAL" in bad.stderr
