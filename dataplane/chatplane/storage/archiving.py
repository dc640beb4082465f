"""Wiring of the cold tier: which storage gets an archive, the background task, the CLI.

`wrap(settings, storage)` puts `ArchivedStorage` around the backend the
settings name when archiving is on (embedded storage: segments under
<data_dir>/archive; CQL: only with `archive_dir` set; either: in an S3 bucket
when `archive_s3_endpoint` is set). `supervise` starts
the archiver as a supervised task of the process that owns the storage (`up`,
each im). `chatplane storage archive` runs one pass by hand and prints what
it did as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import cast

from chatplane import settings as settings_mod
from chatplane.settings import Archive as ArchiveSettings
from chatplane.settings import Settings, SettingsError
from chatplane.storage.archive import ArchivedStorage, Archiver, run_forever
from chatplane.storage.archive_rows import ArchiveRows, CqlRows, SqliteRows
from chatplane.storage.archive_s3 import S3Segments
from chatplane.storage.archive_segments import DirSegments, SegmentStore
from chatplane.storage.base import Storage, StorageError
from chatplane.supervision import Supervisor


def _segments(config: ArchiveSettings, default_dir: Path | None) -> SegmentStore | None:
    """Where segments go: the S3 bucket when an endpoint is set, else the directory."""
    if config.archive_s3_endpoint:
        return S3Segments.from_settings(config)
    if config.archive_dir:
        return DirSegments(Path(config.archive_dir))
    return DirSegments(default_dir) if default_dir is not None else None


def _parts(settings: Settings) -> tuple[ArchiveRows, SegmentStore] | None:
    config, storage = settings.archive, settings.storage
    if storage.backend == "sqlite":
        store = _segments(config, Path(storage.data_dir) / "archive")
        assert store is not None
        return SqliteRows(Path(storage.data_dir) / "chatplane.db"), store
    store = _segments(config, None)  # CQL: only where segments are told to go
    if storage.backend == "scylla" and store is not None:
        from chatplane.storage import scylla

        return CqlRows(scylla.cql_settings(settings)), store
    return None


def wrap(settings: Settings, storage: Storage) -> Storage:
    """The backend with its cold tier around it, or as it is when there is none."""
    parts = _parts(settings)
    if parts is None:
        return storage
    rows, store = parts
    archived = ArchivedStorage(storage, store)
    if settings.archive.archive_after_days > 0:
        archived.archiver = Archiver(archived, rows, store, settings.archive)
        archived.interval_s = settings.archive.archive_interval_s
    return cast(Storage, archived)


def supervise(storage: Storage, supervisor: Supervisor) -> None:
    """Start the background archiver if this storage has one."""
    if isinstance(storage, ArchivedStorage) and storage.archiver is not None:
        archiver, interval_s = storage.archiver, storage.interval_s
        supervisor.spawn("archive", lambda: run_forever(archiver, interval_s))


async def _archive_once(settings: Settings) -> dict[str, int]:
    from chatplane.storage.factory import make_storage

    storage = make_storage(settings)
    if not isinstance(storage, ArchivedStorage) or storage.archiver is None:
        raise SettingsError("archiving is off: set CHATPLANE_ARCHIVE_AFTER_DAYS > 0 (and"
                            " CHATPLANE_ARCHIVE_DIR or CHATPLANE_ARCHIVE_S3_ENDPOINT with the"
                            " scylla backend)")
    await storage.open()
    try:
        report = await storage.archiver.run_once()
    finally:
        await storage.close()
    return dataclasses.asdict(report)


def cmd_archive(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, object]] = {"storage": {}, "archive": {}}
    for section, name, value in (("storage", "data_dir", args.data_dir),
                                 ("storage", "backend", args.storage),
                                 ("storage", "cql_hosts", args.cql_hosts),
                                 ("storage", "keyspace", args.keyspace),
                                 ("archive", "archive_after_days", args.after_days),
                                 ("archive", "archive_dir", args.archive_dir)):
        if value is not None:
            overrides[section][name] = value
    try:
        report = asyncio.run(_archive_once(settings_mod.load(overrides)))
    except (SettingsError, StorageError, OSError) as exc:
        print(f"chatplane: storage archive failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


def register(storage_sub: argparse._SubParsersAction) -> None:
    archive = storage_sub.add_parser(
        "archive", help="move messages older than the threshold into zstd segments, apply retention")
    archive.add_argument("--data-dir", help="embedded storage's data dir (CHATPLANE_DATA_DIR)")
    archive.add_argument("--storage", choices=("sqlite", "scylla"))
    archive.add_argument("--cql-hosts")
    archive.add_argument("--keyspace")
    archive.add_argument("--after-days", type=float,
                         help="archive messages older than this (CHATPLANE_ARCHIVE_AFTER_DAYS, 30)")
    archive.add_argument("--archive-dir", help="where segments go (CHATPLANE_ARCHIVE_DIR)")
    archive.set_defaults(func=cmd_archive)
