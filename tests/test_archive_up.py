"""The cold tier in `chatplane up`: the supervised archiver moves old messages
into segments while the server runs, and clients read the same history; the
`chatplane storage archive` subcommand runs a pass by hand. Segments go to the
data dir and, marked `s3`, to a bucket of a real S3Proxy (the settings
production uses: CHATPLANE_ARCHIVE_S3_*)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.storage.archive_rows import STUB_TYPE
from chatplane.storage.archive_segments import DirSegments, SegmentStore
from tests.support.server import ServerProcess

FAST = {"CHATPLANE_ARCHIVE_AFTER_DAYS": str(2 / 86_400),  # two seconds
        "CHATPLANE_ARCHIVE_INTERVAL_S": "0.5", "CHATPLANE_ARCHIVE_SEGMENT_MESSAGES": "7"}


@dataclass
class Place:
    """Where the server under test puts segments: its settings, and a reader."""

    store: SegmentStore
    env: dict[str, str] = field(default_factory=dict)

    async def segments(self) -> int:
        return sum(name.endswith(".zst") for name in await self.store.names("seg/"))


@pytest.fixture(params=["dir", pytest.param("s3", marks=pytest.mark.s3)])
def place(request: pytest.FixtureRequest, data_dir: Path) -> Place:
    if request.param == "dir":
        return Place(_DataDirSegments(data_dir / "archive"))
    s3 = request.getfixturevalue("s3_server")
    prefix = f"up-{uuid.uuid4().hex[:8]}/"
    return Place(s3.segments(prefix), {
        "CHATPLANE_ARCHIVE_S3_ENDPOINT": s3.endpoint, "CHATPLANE_ARCHIVE_S3_BUCKET": s3.bucket,
        "CHATPLANE_ARCHIVE_S3_PREFIX": prefix, "CHATPLANE_ARCHIVE_S3_ACCESS_KEY": s3.access_key,
        "CHATPLANE_ARCHIVE_S3_SECRET_KEY": s3.secret_key})


class _DataDirSegments(DirSegments):
    """The data dir's segments, listed through all conversations."""

    async def names(self, prefix: str) -> list[str]:
        return [str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*")]


def stubbed(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "chatplane.db") as db:
        return int(db.execute("SELECT count(*) FROM messages WHERE content_type = ?",
                              (STUB_TYPE,)).fetchone()[0])


async def test_up_archives_in_the_background_and_history_reads_the_same(
        data_dir: Path, signer: TokenSigner, place: Place) -> None:
    server = ServerProcess(data_dir, env={**FAST, **place.env})
    server.start()
    try:
        alice = Client(server.url, signer.mint("alice", "phone", 600))
        await alice.connect()
        conversation = await alice.direct("bob")
        for i in range(30):
            await alice.send_text(conversation, f"hello {i}", payload=bytes([i]) * i)
        before = await alice.history(conversation, after_seq=0, limit=100)
        async with asyncio.timeout(30):
            while stubbed(data_dir) < 29 or not await place.segments():
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
        await place.store.close()


def test_storage_archive_by_hand(data_dir: Path, signer: TokenSigner, place: Place) -> None:
    server = ServerProcess(data_dir, env={"CHATPLANE_ARCHIVE_AFTER_DAYS": "0", **place.env})
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
    env = {**os.environ, **place.env}
    done = subprocess.run([*run, "--after-days", str(1 / 86_400)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["messages"] == 11 == stubbed(data_dir)
    assert report["stored_bytes"] > 0
    assert asyncio.run(_count_and_close(place)) == report["segments"] > 0
    off = subprocess.run([*run, "--after-days", "0"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert off.returncode == 2 and off.stderr.count("\n") == 1 and "archiving is off" in off.stderr


async def _count_and_close(place: Place) -> int:
    try:
        return await place.segments()
    finally:
        await place.store.close()


@pytest.mark.s3
def test_a_missing_bucket_fails_the_start_in_one_line(data_dir: Path, s3_server: Any) -> None:
    env = {**os.environ, "CHATPLANE_ARCHIVE_S3_ENDPOINT": s3_server.endpoint,
           "CHATPLANE_ARCHIVE_S3_BUCKET": "no-such-bucket",
           "CHATPLANE_ARCHIVE_S3_ACCESS_KEY": s3_server.access_key,
           "CHATPLANE_ARCHIVE_S3_SECRET_KEY": s3_server.secret_key}
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", "storage", "archive",
                           "--data-dir", str(data_dir), "--after-days", "1"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no-such-bucket" in done.stderr and "does not exist" in done.stderr
