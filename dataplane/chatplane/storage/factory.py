"""Choose and open the storage backend the settings name."""

from __future__ import annotations

from pathlib import Path

from chatplane.settings import Settings
from chatplane.storage import archiving
from chatplane.storage.base import Storage, StorageError


def make_storage(settings: Settings) -> Storage:
    config = settings.storage
    if config.backend == "sqlite":
        from chatplane.storage.sqlite import SqliteStorage

        return archiving.wrap(settings, SqliteStorage(
            Path(config.data_dir) / "chatplane.db", synchronous=config.sqlite_synchronous,
            shared=bool(config.sqlite_shared), wedge_s=settings.supervision.wedge_s))
    if config.backend == "scylla":
        try:
            from chatplane.storage import scylla
        except ImportError as exc:
            raise StorageError(f"the scylla backend needs scylla-driver: {exc}") from exc
        return archiving.wrap(settings, scylla.from_settings(settings))  # type: ignore[attr-defined]
    raise StorageError(f"unknown storage backend {config.backend!r}")
