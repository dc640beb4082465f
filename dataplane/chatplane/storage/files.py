"""The data dir's modes: private to the user that runs chatplane.

The data dir holds the SQLite database (with its -wal and -shm files), the
token signing key and the admin secret: anyone who reads them can read every
message or sign in as anyone. `private_files` runs before anything is
created: umask 077 (every file the process makes afterwards, SQLite's
included, is 0600, every directory 0700), the dir itself 0700, and whatever
an older chatplane left there readable by others (0644) tightened to 0600.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("chatplane.storage.files")

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_files(data_dir: str | Path) -> None:
    """Umask 077 for this process; an existing data dir 0700 and its files 0600
    (a missing one is created later, by whoever needs it, under the umask)."""
    os.umask(0o077)
    path = Path(data_dir)
    if path.is_dir():
        tighten(path)


def tighten(path: Path) -> None:
    """`path` 0700 and the regular files directly in it 0600, where this user
    owns them (others' files are left to their owner). A mode that cannot be
    changed (a read-only volume) is logged, not fatal."""
    uid = os.getuid()
    for item in (path, *path.iterdir()):
        try:
            info = item.lstat()
            wanted = DIR_MODE if item == path else FILE_MODE
            if (info.st_uid == uid and stat.S_IMODE(info.st_mode) & 0o077
                    and (item == path or stat.S_ISREG(info.st_mode))):
                item.chmod(wanted)
        except FileNotFoundError:  # a -shm/-wal removed meanwhile
            continue
        except OSError as exc:
            log.warning("cannot make %s private: %s", item, exc)
