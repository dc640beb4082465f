"""`chatplane bench archive`: the cold tier measured (compression, bytes per
message, history reads from the archive against hot rows).

    chatplane bench archive --conversations 20 --messages 2000
    chatplane bench archive --s3   # segments in CHATPLANE_ARCHIVE_S3_*'s bucket

Fills embedded storage in a temporary directory with chat-like messages
(sentences drawn from a fixed vocabulary, ids and times as the im makes
them), times history pages (50 messages after a random cursor) from hot
rows, archives everything but each conversation's newest message, and times
the same pages again, first with a cold segment cache (a fresh reader) and
then warm. With `--s3` the segments go to the bucket the CHATPLANE_ARCHIVE_S3_*
settings name (under a prefix of the run's own, deleted after). Prints one
JSON object. Synthetic text compresses better than
real chat with links and emoji would: read the ratio as an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from chatplane import settings as settings_mod
from chatplane.settings import Archive
from chatplane.storage.archive import DAY_MS, ArchivedStorage, Archiver
from chatplane.storage.archive_rows import SqliteRows
from chatplane.storage.archive_s3 import S3Segments
from chatplane.storage.archive_segments import DirSegments, SegmentStore
from chatplane.storage.base import SendRequest, Storage
from chatplane.storage.sqlite import SqliteStorage

WORDS = ("the meeting is moved to tomorrow at ten can you send me the file ok thanks "
         "see you later did you see the game last night I will be late sorry lunch "
         "where are we going sounds good let me check and get back to you").split()


async def pages(storage: Storage, ids: list[str], n: int, count: int, rng: random.Random,
                fresh: SegmentStore | None = None) -> float:
    """Median seconds per 50-message page after a random cursor (with `fresh`:
    each page through a new reader, so its segment is read and decompressed)."""
    times = []
    inner = storage.inner if isinstance(storage, ArchivedStorage) else storage
    for _ in range(count):
        conversation_id = rng.choice(ids)
        start = time.perf_counter()
        if fresh is not None:
            storage = cast(Storage, ArchivedStorage(inner, fresh))
        got = await storage.history(conversation_id, after_seq=rng.randrange(n - 60), limit=50)
        times.append(time.perf_counter() - start)
        if len(got) != 50:
            raise RuntimeError(f"a page of {len(got)} messages from {conversation_id}, not 50")
    return statistics.median(times)


def _s3_store(tag: str) -> S3Segments:
    config = settings_mod.load().archive
    if not config.archive_s3_endpoint:
        raise settings_mod.SettingsError("--s3 needs CHATPLANE_ARCHIVE_S3_ENDPOINT (and the"
                                         " bucket and keys)")
    store = S3Segments.from_settings(config)
    store.prefix = f"{config.archive_s3_prefix}archive-bench-{tag}/"
    return store


async def run(conversations: int, messages: int, reads: int, seed: int,
              s3: bool = False) -> dict[str, object]:
    rng = random.Random(seed)
    # a bad bucket configuration fails before the minutes of writing, not after them
    bucket = _s3_store(f"{random.getrandbits(32):08x}") if s3 else None
    with tempfile.TemporaryDirectory(prefix="chatplane-archive-bench-") as tmp:
        root = Path(tmp)
        storage = SqliteStorage(root / "chat.db", synchronous="NORMAL")
        await storage.open()
        ids = []
        for c in range(conversations):
            a, b = f"user{c}a", f"user{c}b"
            cid = (await storage.ensure_direct(a, b, 0)).conversation_id
            ids.append(cid)
            for i in range(1, messages + 1):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 16)))
                await storage.append(SendRequest(
                    conversation_id=cid, sender=(a, b)[i % 2], sender_device="phone", cid=i,
                    text=text, message_id=f"{rng.getrandbits(64):016x}", sent_at_ms=i * 1000),
                    (a, b))
        hot = await pages(storage, ids, messages, reads, rng)
        table_bytes = await asyncio.to_thread(_table_bytes, root / "chat.db")
        store: SegmentStore = bucket if bucket is not None else DirSegments(root / "archive")
        rows = SqliteRows(root / "chat.db")
        archiver = Archiver(ArchivedStorage(storage, store), rows, store, Archive())
        start = time.perf_counter()
        report = await archiver.run_once(now_ms=(messages + 1) * 1000 + 31 * DAY_MS)
        took = time.perf_counter() - start
        cold = await pages(storage, ids, messages, reads, rng, fresh=store)
        warm_reader = ArchivedStorage(storage, store)
        reader = cast(Storage, warm_reader)
        await pages(reader, ids, messages, reads, rng)
        warm = await pages(reader, ids, messages, reads, rng)
        if s3:  # a bucket is not a temporary directory
            for name in await store.names(""):
                await store.delete(name)
        await store.close()
        await storage.close()
    return {"segments_in": "s3" if s3 else "dir",
            "messages_archived": report.messages, "segments": report.segments,
            "record_bytes": report.raw_bytes, "segment_bytes": report.stored_bytes,
            "compression_ratio": round(report.raw_bytes / max(report.stored_bytes, 1), 2),
            "segment_bytes_per_message": round(report.stored_bytes / max(report.messages, 1), 1),
            "archive_s": round(took, 2),
            "hot_bytes_per_message": round(table_bytes["messages"] / (conversations * messages), 1),
            "inbox_bytes_per_entry": round(table_bytes["inbox"] / (2 * conversations * messages), 1),
            "page_ms_hot": round(hot * 1000, 3),
            "page_ms_archive_cold": round(cold * 1000, 3),
            "page_ms_archive_warm": round(warm * 1000, 3)}


def _table_bytes(path: Path) -> dict[str, int]:
    """Bytes of pages per table and its indexes (SQLite's dbstat)."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT s.name, m.tbl_name, sum(s.pgsize) FROM dbstat s JOIN"
                          " sqlite_master m ON m.name = s.name GROUP BY s.name").fetchall()
    out: dict[str, int] = {}
    for _, table, size in rows:
        out[table] = out.get(table, 0) + int(size)
    return out


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser("archive", help="the cold archive: compression, bytes per message, "
                             "history pages from segments against hot rows (embedded storage)",
                             description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=20)
    p.add_argument("--messages", type=int, default=2000, help="per conversation")
    p.add_argument("--reads", type=int, default=200, help="pages timed per phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--s3", action="store_true",
                   help="segments in the bucket CHATPLANE_ARCHIVE_S3_* names")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if args.conversations < 1 or args.messages < 100 or args.reads < 1:
        print("chatplane bench archive: need --conversations >= 1, --messages >= 100, "
              "--reads >= 1", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(args.conversations, args.messages, args.reads, args.seed,
                                 args.s3))
    except settings_mod.SettingsError as exc:
        print(f"chatplane bench archive: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
