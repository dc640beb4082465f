"""`chatplane storage backup` under traffic and `restore`, round trip, real processes.

A real `chatplane up` with a pair of SDK clients sending to each other
without pause; `chatplane storage backup` (its own process) copies the data
dir mid-traffic; `chatplane storage restore` puts the copy in a new data dir
and a second `chatplane up` serves it. Every message acked before the
backup began is there, with its text; the restored conversation goes on
from its last seq, never repeating one; old tokens still work (the keys came
with the backup); a non-empty data dir is refused without --force."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatplane.cli", *args], capture_output=True,
                          text=True, timeout=60)


async def every_message(client: Client, conversation_id: str) -> dict[int, str]:
    """seq -> text of the whole timeline, paged backwards."""
    found: dict[int, str] = {}
    before: int | None = None
    while True:
        page = await client.history(conversation_id, before_seq=before, limit=200)
        if not page:
            return found
        found.update((m.seq, m.text) for m in page)
        before = page[0].seq
        if before == 1:
            return found


async def test_backup_mid_traffic_restores_every_acked_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tcp=False)
    server.start()
    signer = TokenSigner.from_data_dir(data)
    alice = Client(server.url, signer.mint("alice", "phone"))
    bob = Client(server.url, signer.mint("bob", "phone"))
    await alice.connect()
    await bob.connect()
    conv = await alice.direct("bob")
    acked: list[tuple[float, int, str]] = []  # (when acked, seq, text)
    stop = asyncio.Event()

    async def keep_sending(client: Client, name: str) -> None:
        i = 0
        while not stop.is_set():
            text = f"{name}-{i}"
            ack = await client.send_text(conv, text)
            acked.append((time.monotonic(), ack.seq, text))
            i += 1

    senders = [asyncio.ensure_future(keep_sending(c, n)) for c, n in ((alice, "a"), (bob, "b"))]
    try:
        await asyncio.sleep(1.5)
        backup_dir = tmp_path / "backup"
        began = time.monotonic()
        made = await asyncio.to_thread(cli, "storage", "backup", str(backup_dir),
                                       "--data-dir", str(data))
        ended = time.monotonic()
        await asyncio.sleep(0.5)  # traffic goes on after the backup too
    finally:
        stop.set()
        await asyncio.gather(*senders)
    assert made.returncode == 0, made.stderr
    before = {seq: text for at, seq, text in acked if at < began}
    during = [seq for at, seq, _ in acked if began <= at <= ended]
    after = [seq for at, seq, _ in acked if at > ended]
    print(f"acked before the backup {len(before)}, during it {len(during)}"
          f" ({(ended - began) * 1000:.0f} ms), after it {len(after)}")
    assert len(before) > 50 and after, (len(before), len(during), len(after))
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    assert {p.name for p in backup_dir.iterdir()} == {"chatplane.db", "token.key",
                                                      "admin.secret", "backup.json"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backup_dir.iterdir())
    await alice.close()
    await bob.close()
    # over the live data dir of a running server: refused, even with --force
    live = await asyncio.to_thread(cli, "storage", "restore", str(backup_dir),
                                   "--data-dir", str(data), "--force")
    assert live.returncode == 2 and "a server is using" in live.stderr, live.stderr
    assert server.stop() == 0

    restored = tmp_path / "restored"
    put = await asyncio.to_thread(cli, "storage", "restore", str(backup_dir),
                                  "--data-dir", str(restored))
    assert put.returncode == 0, put.stderr
    again = await asyncio.to_thread(cli, "storage", "restore", str(backup_dir),
                                    "--data-dir", str(restored))
    assert again.returncode == 2 and "not empty" in again.stderr
    assert stat.S_IMODE(restored.stat().st_mode) == 0o700

    second = ServerProcess(restored, tcp=False)
    second.start()
    try:
        # the token minted with the original key still verifies: the key came along
        alice = Client(second.url, signer.mint("alice", "phone"))
        await alice.connect()
        timeline = await every_message(alice, conv)
        missing = {seq for seq in before if timeline.get(seq) != before[seq]}
        assert not missing, f"{len(missing)} acked messages lost, e.g. {sorted(missing)[:5]}"
        head = max(timeline)
        assert sorted(timeline) == list(range(1, head + 1))  # contiguous
        assert head >= max(before)
        new = [(await alice.send_text(conv, f"after-restore-{i}")).seq for i in range(5)]
        assert new == list(range(head + 1, head + 6))  # continues, never repeats
        assert set(new).isdisjoint(timeline)
        await alice.close()
    finally:
        assert second.stop() == 0
    # stopped: --force replaces the database (and its WAL) with the backup's
    forced = await asyncio.to_thread(cli, "storage", "restore", str(backup_dir),
                                     "--data-dir", str(restored), "--force")
    assert forced.returncode == 0, forced.stderr
    third = ServerProcess(restored, tcp=False)
    third.start()
    try:
        alice = Client(third.url, signer.mint("alice", "phone"))
        await alice.connect()
        assert max(await every_message(alice, conv)) == head  # the backup's, not the later 5
        await alice.close()
    finally:
        assert third.stop() == 0


def test_backup_refusals_and_the_cql_procedure(tmp_path: Path) -> None:
    cql = cli("storage", "backup", str(tmp_path / "b"), "--storage", "scylla")
    assert cql.returncode == 2
    assert "nodetool snapshot" in cql.stdout and "DESCRIBE KEYSPACE chatplane" in cql.stdout
    assert "copies embedded (SQLite) storage only" in cql.stderr
    assert not (tmp_path / "b").exists()
    missing = cli("storage", "backup", str(tmp_path / "b"), "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no SQLite database" in missing.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chatplane.db").write_bytes(b"")
    taken = cli("storage", "backup", str(tmp_path / "taken"), "--data-dir", str(tmp_path / "data"))
    assert taken.returncode == 2 and "not an empty directory" in taken.stderr
    nothing = cli("storage", "restore", str(tmp_path / "none"), "--data-dir", str(tmp_path / "r"))
    assert nothing.returncode == 2 and "no backup at" in nothing.stderr
