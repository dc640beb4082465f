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


async def test_kill_9_on_scylla_loses_nothing_acked(cql_server: CqlService, tmp_path: Path) -> None:
    """`chatplane up --storage scylla` killed with -9 mid-traffic and started
    again: every acked message is there, seqs continue with no repeat, and the
    clients recover by themselves. (`up` keeps no counter anywhere but the CQL
    store, so losing Redis too changes nothing here.)"""
    from chatplane.checker import DeliveryChecker
    from tests.support.traffic import Device, send_many, wait_until_received

    hosts = ",".join(cql_server.contact_points)
    migrate = [sys.executable, "-m", "chatplane.cli", "storage", "migrate", "--cql-hosts", hosts,
               "--keyspace", "cli_kill_test", "--cql-replication", "1"]
    done = await asyncio.to_thread(subprocess.run, migrate, capture_output=True, text=True,
                                   timeout=180)
    assert done.returncode == 0, done.stderr
    server = ServerProcess(tmp_path, extra_args=["--storage", "scylla", "--cql-hosts", hosts,
                                                 "--keyspace", "cli_kill_test"])
    server.start(timeout_s=60)
    try:
        signer = TokenSigner.from_data_dir(tmp_path)
        checker = DeliveryChecker()
        devices = []
        for user in ("alice", "bob"):
            client = Client(server.url, signer.mint(user), transport="tcp")
            await client.connect()
            device = Device(client, user, "default", checker)
            device.start()
            devices.append(device)
        conversation = await devices[0].client.direct("bob")
        checker.add_member(conversation, "alice")
        checker.add_member(conversation, "bob")

        async def killer() -> None:
            while checker.acks_by_sender["alice"] < 20:
                await asyncio.sleep(0.01)
            server.kill()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start, 60)

        _, seqs = await asyncio.gather(killer(), send_many(devices[0], conversation, 60, "k",
                                                           in_flight=5))
        await wait_until_received(devices, 60, timeout_s=90)
        assert sorted(seqs) == list(range(1, 61))
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary()
        for device in devices:
            await device.stop()
    finally:
        server.stop()
