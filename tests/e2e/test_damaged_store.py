"""A damaged SQLite file is refused at start, and the data dir is private.

Before: a damaged page let `chatplane up` start, `/readyz` said 200 and every
request failed with a retriable UNAVAILABLE "malformed". Now the start-up
`PRAGMA quick_check` refuses to serve it with one line and exit code 2.
Files: the data dir is 0700 and everything in it (database, -wal, -shm,
keys) 0600, even a data dir an older version left 0755/0644."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


async def fill(server: ServerProcess, signer: TokenSigner, count: int) -> None:
    alice = Client(server.url, signer.mint("alice", "phone"))
    await alice.connect()
    conv = await alice.direct("bob")
    for i in range(count):
        await alice.send_text(conv, f"message {i} " + "x" * 200)
    await alice.close()


def modes(data_dir: Path) -> dict[str, int]:
    """name -> permission bits of the dir (".") and of each file in it."""
    return {".": stat.S_IMODE(data_dir.stat().st_mode),
            **{p.name: stat.S_IMODE(p.stat().st_mode) for p in data_dir.iterdir()}}


def loosen(data_dir: Path) -> None:
    """The modes an older chatplane left: 0755 and 0644."""
    data_dir.chmod(0o755)
    for path in data_dir.iterdir():
        path.chmod(0o644)


def corrupt_messages_root(db_path: Path) -> None:
    """Overwrite the first page of the messages table's b-tree with garbage."""
    db = sqlite3.connect(db_path)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'messages'").fetchone()
    db.close()
    with db_path.open("r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\xa5" * page_size)


async def test_a_damaged_page_stops_the_start_with_one_line(data_dir: Path,
                                                           signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, tcp=False)
    server.start()
    await fill(server, signer, 600)
    assert server.stop() == 0  # a clean stop checkpoints the WAL into the file
    db_path = data_dir / "chatplane.db"
    corrupt_messages_root(db_path)

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(data_dir), "--port", "0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is damaged" in lines[0] and "chatplane.db" in lines[0]
    assert "restore" in lines[0] and "Traceback" not in result.stderr
    assert "ready" not in result.stdout


async def test_data_files_and_keys_are_private(data_dir: Path, signer: TokenSigner) -> None:
    loosen(data_dir)
    server = ServerProcess(data_dir, tcp=False)
    server.start()
    try:
        await fill(server, signer, 5)
        found = modes(data_dir)
        assert found.pop(".") == 0o700
        assert {"chatplane.db", "chatplane.db-wal", "chatplane.db-shm", "token.key",
                "admin.secret"} <= set(found)
        assert set(found.values()) == {0o600}, found
    finally:
        server.stop()
