"""The cold tier in `chatplane up`: the supervised archiver moves old messages
into segments while the server runs, and clients read the same history; the
`chatplane storage archive` subcommand runs a pass by hand."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.storage.archive_rows import STUB_TYPE
from tests.support.server import ServerProcess

FAST = {"CHATPLANE_ARCHIVE_AFTER_DAYS": str(2 / 86_400),  # two seconds
        "CHATPLANE_ARCHIVE_INTERVAL_S": "0.5", "CHATPLANE_ARCHIVE_SEGMENT_MESSAGES": "7"}


def stubbed(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "chatplane.db") as db:
        return int(db.execute("SELECT count(*) FROM messages WHERE content_type = ?",
                              (STUB_TYPE,)).fetchone()[0])


async def test_up_archives_in_the_background_and_history_reads_the_same(
        data_dir: Path, signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, env=FAST)
    server.start()
    try:
        alice = Client(server.url, signer.mint("alice", "phone", 600))
        await alice.connect()
        conversation = await alice.direct("bob")
        for i in range(30):
            await alice.send_text(conversation, f"hello {i}", payload=bytes([i]) * i)
        before = await alice.history(conversation, after_seq=0, limit=100)
        async with asyncio.timeout(30):
            while stubbed(data_dir) < 29 or not list((data_dir / "archive").rglob("*.zst")):
                await asyncio.sleep(0.3)
        assert stubbed(data_dir) == 29  # all but the newest
        bob = Client(server.url, signer.mint("bob", "laptop", 600))
        await bob.connect()
        assert await bob.history(conversation, after_seq=0, limit=100) == before
        newest_first = await bob.history(conversation, before_seq=20, limit=8)
        assert newest_first == before[11:19]
        await alice.close()
        await bob.close()
    finally:
        server.stop()


def test_storage_archive_by_hand(data_dir: Path, signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, env={"CHATPLANE_ARCHIVE_AFTER_DAYS": "0"})
    server.start()

    async def chat() -> None:
        alice = Client(server.url, signer.mint("alice", "phone", 600))
        await alice.connect()
        conversation = await alice.direct("bob")
        for i in range(12):
            await alice.send_text(conversation, f"m{i}")
        await alice.close()

    try:
        asyncio.run(chat())
    finally:
        server.stop()
    # --after-days below is one second: let every message grow that old (a
    # quick run archived none of them)
    time.sleep(1.5)
    run = [sys.executable, "-m", "chatplane.cli", "storage", "archive", "--data-dir",
           str(data_dir)]
    done = subprocess.run([*run, "--after-days", str(1 / 86_400)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["messages"] == 11 == stubbed(data_dir)
    assert report["stored_bytes"] > 0
    off = subprocess.run([*run, "--after-days", "0"], capture_output=True, text=True, timeout=60)
    assert off.returncode == 2 and off.stderr.count("\n") == 1 and "archiving is off" in off.stderr
