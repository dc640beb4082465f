"""The data dir's modes: private to the user that runs chatplane.

The data dir holds the SQLite database (with its -wal and -shm files), the
token signing key and the admin secret: anyone who reads them can read every
message or sign in as anyone. `private_files` runs before anything is
created: umask 077 (every file the process makes afterwards, SQLite's
included, is 0600, every directory 0700), the dir itself 0700, and whatever
an older chatplane left there readable by others (0644) tightened to 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_files(data_dir: str | Path) -> None:
    """Umask 077 for this process; the data dir 0700 and its files 0600."""
    os.umask(0o077)
    path = Path(data_dir)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path)


def tighten(path: Path) -> None:
    """`path` 0700 and the regular files directly in it 0600, where this user
    owns them (a dir shared with others' files is left to its owner)."""
    uid = os.getuid()
    info = path.stat()
    if info.st_uid == uid and stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(DIR_MODE)
    for child in path.iterdir():
        try:
            child_info = child.lstat()
        except FileNotFoundError:  # a -shm/-wal removed meanwhile
            continue
        if (stat.S_ISREG(child_info.st_mode) and child_info.st_uid == uid
                and stat.S_IMODE(child_info.st_mode) & 0o077):
            child.chmod(FILE_MODE)
