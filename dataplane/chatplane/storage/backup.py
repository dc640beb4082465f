"""`chatplane storage backup DEST` and `chatplane storage restore SRC`.

Embedded storage (SQLite): a backup is a directory (0700) holding
- `chatplane.db`: a consistent copy of the live database made with SQLite's
  online backup API in one step, i.e. inside one read transaction. The file
  is in WAL mode, so the running server's writer goes on meanwhile and the
  copy is the database as of one commit: every write acked before the backup
  began is in it. The copy is switched to a rollback journal (one
  self-contained file) and checked with `PRAGMA quick_check`.
- `token.key` and `admin.secret` when the data dir has them (`--no-keys`
  leaves them out): restored with the data, every token already issued still
  verifies. They are secrets: the backup is as sensitive as the data dir.
- `backup.json`: when, from where, the store id, the message count.
Every file is 0600.

A restore copies a backup into a data dir that is empty (or, with --force,
replaces the database, its -wal/-shm files and the keys the backup holds)
and gives the restored store a new `store_id`: the restored store's history
ends at the backup, and devices whose inbox cursor counted past it must start
over (the server tells them so at login: docs/protocol.md, `store_id`).
A data dir whose database a running server has open is refused (an
exclusive lock on it is refused while any connection has it open).

CQL (ScyllaDB/Cassandra) is backed up with the database's own snapshots:
`backup` prints that procedure (docs/operations.md) and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
import uuid
from pathlib import Path

from chatplane import settings as settings_mod
from chatplane.auth import ADMIN_SECRET_FILE, TOKEN_KEY_FILE
from chatplane.storage.base import StorageError
from chatplane.storage.files import DIR_MODE, FILE_MODE, private_files
from chatplane.storage.sqlite import check_integrity

DB_FILE = "chatplane.db"
KEY_FILES = (TOKEN_KEY_FILE, ADMIN_SECRET_FILE)
MANIFEST = "backup.json"

CQL_PROCEDURE = """\
The scylla backend is backed up with the database's own snapshots, not by chatplane:
  1. the schema:   cqlsh HOST -e "DESCRIBE KEYSPACE {keyspace}" > {keyspace}-schema.cql
  2. on EVERY node, at about the same time:
                   nodetool snapshot -t chatplane-$(date +%Y%m%d%H%M) {keyspace}
  3. copy each node's data/{keyspace}/*/snapshots/<tag>/ directories off the node
  4. the token key and admin secret (CHATPLANE_TOKEN_SECRET, CHATPLANE_ADMIN_SECRET:
     the Secret the operator made) with them
Restore: recreate the keyspace from the schema file, stop the nodes, copy each node's
snapshot files into its table directories (or load them with sstableloader), start
the nodes, run `nodetool repair {keyspace}`. See docs/operations.md, "Backup and restore".
"""


class BackupError(Exception):
    """A backup or restore that cannot be done: one line, exit code 2."""


def _private_copy(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as out, source.open("rb") as data:
        shutil.copyfileobj(data, out)
        out.flush()
        os.fsync(out.fileno())


def _quick_check(db: sqlite3.Connection, what: Path) -> None:
    try:
        check_integrity(db, what)
    except StorageError as exc:
        raise BackupError(str(exc)) from exc


def _copy_database(source: Path, target: Path) -> dict[str, object]:
    """SQLite's online backup of `source` into `target` (a new 0600 file)."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    # read-write, though it only reads: a read-only connection cannot open a
    # WAL database whose -shm is gone (a stopped server's)
    src = sqlite3.connect(source, isolation_level=None)
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        src.execute("PRAGMA busy_timeout=10000")
        # pages=-1: every page in one step, in one read transaction: one commit's state
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        _quick_check(dst, target)
        store = dst.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        messages = dst.execute("SELECT count(*) FROM messages").fetchone()[0]
        return {"store_id": store[0] if store else "", "messages": int(messages)}
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from exc
    finally:
        src.close()
        dst.close()


def backup(data_dir: Path, dest: Path, *, keys: bool = True) -> dict[str, object]:
    source = data_dir / DB_FILE
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source} (is --data-dir right?)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} exists and is not an empty directory")
    dest.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    dest.chmod(DIR_MODE)
    began = time.time()
    summary = _copy_database(source, dest / DB_FILE)
    copied = []
    for name in KEY_FILES if keys else ():
        if (data_dir / name).is_file():
            _private_copy(data_dir / name, dest / name)
            copied.append(name)
    manifest = {"created_at": began, "source": str(source.resolve()), "database": DB_FILE,
                "keys": copied, **summary}
    fd = os.open(dest / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        json.dump(manifest, out, indent=1)
    return manifest


def _in_use(database: Path) -> bool:
    """Whether another connection (a running server) has `database` open: an
    exclusive lock is refused while any does, WAL or not."""
    if not database.exists():
        return False
    db = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        db.close()


def restore(source: Path, data_dir: Path, *, force: bool = False) -> dict[str, object]:
    backup_db = source / DB_FILE if source.is_dir() else source
    if not backup_db.is_file():
        raise BackupError(f"no backup at {source} (expected {source / DB_FILE})")
    if data_dir.exists() and any(data_dir.iterdir()) and not force:
        raise BackupError(f"refusing to restore into {data_dir}: it is not empty"
                          " (stop its server; --force replaces its database and keys)")
    check = sqlite3.connect(f"file:{backup_db}?mode=ro", uri=True)
    try:
        _quick_check(check, backup_db)
    except sqlite3.Error as exc:
        raise BackupError(f"{backup_db} is not a usable database: {exc}") from exc
    finally:
        check.close()
    target = data_dir / DB_FILE
    if _in_use(target):
        raise BackupError(f"refusing to restore into {data_dir}: a server is using"
                          f" {target}; stop it first")
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    private_files(data_dir)
    # a -wal left beside the old file would be replayed into the restored one
    for stale in (target, Path(f"{target}-wal"), Path(f"{target}-shm"), Path(f"{target}.restoring")):
        stale.unlink(missing_ok=True)
    staging = Path(f"{target}.restoring")
    summary = _copy_database(backup_db, staging)
    store_id = uuid.uuid4().hex  # a new history from here: devices start over (docstring)
    db = sqlite3.connect(staging, isolation_level=None)
    try:
        db.execute("UPDATE meta SET value = ? WHERE key = 'store_id'", (store_id,))
    finally:
        db.close()
    os.replace(staging, target)
    copied = []
    if source.is_dir():
        for name in KEY_FILES:
            if (source / name).is_file():
                (data_dir / name).unlink(missing_ok=True)
                _private_copy(source / name, data_dir / name)
                copied.append(name)
    return {**summary, "store_id": store_id, "keys": copied, "data_dir": str(data_dir)}


def cmd_backup(args: argparse.Namespace) -> int:
    os.umask(0o077)
    try:
        settings = settings_mod.load({"storage": {k: v for k, v in (
            ("data_dir", args.data_dir), ("backend", args.storage)) if v}})
    except settings_mod.SettingsError as exc:
        print(f"chatplane: bad configuration: {exc}", file=sys.stderr)
        return 2
    if settings.storage.backend != "sqlite":
        print(CQL_PROCEDURE.format(keyspace=settings.storage.keyspace))
        print("chatplane: storage backup copies embedded (SQLite) storage only;"
              " back up CQL with the procedure above", file=sys.stderr)
        return 2
    try:
        manifest = backup(Path(settings.storage.data_dir), Path(args.dest), keys=not args.no_keys)
    except (BackupError, OSError) as exc:
        print(f"chatplane: backup failed: {exc}", file=sys.stderr)
        return 2
    print(f"backup of {manifest['source']} in {args.dest}: {manifest['messages']} messages,"
          f" keys {', '.join(manifest['keys']) or 'none'}")  # type: ignore[arg-type]
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    os.umask(0o077)
    try:
        summary = restore(Path(args.src), Path(args.data_dir), force=args.force)
    except (BackupError, OSError) as exc:
        print(f"chatplane: restore failed: {exc}", file=sys.stderr)
        return 2
    print(f"restored {summary['messages']} messages into {summary['data_dir']}"
          f" (new store id {summary['store_id']}; keys"
          f" {', '.join(summary['keys']) or 'none'})")  # type: ignore[arg-type]
    return 0


def register(storage_sub: argparse._SubParsersAction) -> None:
    p = storage_sub.add_parser("backup", help="online, consistent copy of embedded storage and keys")
    p.add_argument("dest", help="a new (or empty) directory")
    p.add_argument("--data-dir", help="the server's data dir (CHATPLANE_DATA_DIR)")
    p.add_argument("--storage", choices=("sqlite", "scylla"), help="CHATPLANE_STORAGE")
    p.add_argument("--no-keys", action="store_true", help="leave the token key and admin secret out")
    p.set_defaults(func=cmd_backup)
    r = storage_sub.add_parser("restore", help="restore a backup into a data dir")
    r.add_argument("src", help="a directory made by `storage backup`")
    r.add_argument("--data-dir", required=True, help="where to restore (empty unless --force)")
    r.add_argument("--force", action="store_true",
                   help="replace the database and keys of a non-empty data dir")
    r.set_defaults(func=cmd_restore)
