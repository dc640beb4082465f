"""`chatplane storage migrate` and `chatplane up --storage scylla` on the real
CQL server: the production path from the command line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.services import CqlService
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.cql, pytest.mark.slow]


async def test_migrate_then_up_on_scylla(cql_server: CqlService, tmp_path: Path) -> None:
    hosts = ",".join(cql_server.contact_points)
    migrate = [sys.executable, "-m", "chatplane.cli", "storage", "migrate", "--cql-hosts", hosts,
               "--keyspace", "cli_up_test", "--cql-replication", "1"]
    first = await asyncio.to_thread(subprocess.run, migrate, capture_output=True, text=True,
                                    timeout=180)
    assert first.returncode == 0, first.stderr
    again = await asyncio.to_thread(subprocess.run, migrate, capture_output=True, text=True,
                                    timeout=180)
    assert again.returncode == 0 and "already current" in again.stdout, again.stderr
    server = ServerProcess(tmp_path, extra_args=["--storage", "scylla", "--cql-hosts", hosts,
                                                 "--keyspace", "cli_up_test"])
    server.start(timeout_s=60)
    try:
        signer = TokenSigner.from_data_dir(tmp_path)
        alice, bob = Client(server.url, signer.mint("alice")), Client(server.url, signer.mint("bob"))
        await alice.connect()
        await bob.connect()
        conversation = await alice.direct("bob")
        acks = [await alice.send_text(conversation, f"m{i}") for i in range(5)]
        got = []
        async for m in bob.messages():
            got.append((m.seq, m.text))
            if len(got) == 5:
                break
        assert [a.seq for a in acks] == [s for s, _ in got] and got[0][1] == "m0"
        await alice.close()
        await bob.close()
    finally:
        server.stop()


def test_bad_cql_configuration_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path), "--port", "0",
         "--storage", "scylla", "--cql-hosts", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
