"""The SQLite writer's own figures on /metrics: how long a write waited for its
group commit, and how long each commit took (a real database file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatplane.storage.base import SendRequest
from chatplane.storage.sqlite import SqliteStorage


def figure(text: str, line_start: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(line.split()[-1])


async def test_every_write_is_timed_and_commits_are_counted(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        assert figure(storage.metrics_text(), "chatplane_storage_commit_ms_count") == 0
        conv = await storage.ensure_direct("ann", "bob", 1)
        writes = 200
        await asyncio.gather(*(
            storage.append(SendRequest(conv.conversation_id, "ann", "web", cid, f"m{cid}", f"id{cid}", cid),
                           ["ann", "bob"]) for cid in range(1, writes + 1)))
        text = storage.metrics_text()
    finally:
        await storage.close()
    waits = figure(text, "chatplane_storage_write_wait_ms_count")
    commits = figure(text, "chatplane_storage_commit_ms_count")
    assert waits == writes + 1  # the appends and the conversation
    # group commit: 200 writes queued at once share far fewer commits
    assert 2 <= commits < writes
    assert figure(text, "chatplane_storage_commit_ms_sum") > 0
    assert figure(text, 'chatplane_storage_commit_ms_bucket{le="+Inf"}') == commits
    assert "# TYPE chatplane_storage_write_wait_ms histogram" in text
