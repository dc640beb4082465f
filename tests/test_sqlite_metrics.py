"""The SQLite writer's own figures on /metrics: how long a write waited for its
group commit, and how long each commit took (a real database file), in seconds,
and whether the writer thread runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatplane.storage.base import SendRequest
from chatplane.storage.sqlite import SqliteStorage
from tests.support import prom


async def test_every_write_is_timed_and_commits_are_counted(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        first = prom.of(storage.families)
        assert first["chatplane_storage_commit_seconds_count"] == 0
        assert first["chatplane_storage_writer_up"] == 1
        conv = await storage.ensure_direct("ann", "bob", 1)
        writes = 200
        await asyncio.gather(*(
            storage.append(SendRequest(conv.conversation_id, "ann", "web", cid, f"m{cid}", f"id{cid}", cid),
                           ["ann", "bob"]) for cid in range(1, writes + 1)))
        text = prom.exposition(storage.families)
    finally:
        await storage.close()
    figures = prom.samples(text)
    waits = figures["chatplane_storage_write_wait_seconds_count"]
    commits = figures["chatplane_storage_commit_seconds_count"]
    assert waits == writes + 1  # the appends and the conversation
    # group commit: 200 writes queued at once share far fewer commits
    assert 2 <= commits < writes
    # seconds: a commit on a local disk takes well under one
    assert 0 < figures["chatplane_storage_commit_seconds_sum"] < commits
    assert figures['chatplane_storage_commit_seconds_bucket{le="+Inf"}'] == commits
    assert "# TYPE chatplane_storage_write_wait_seconds histogram" in text
    assert prom.of(storage.families)["chatplane_storage_writer_up"] == 0  # closed
