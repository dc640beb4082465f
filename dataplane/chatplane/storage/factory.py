"""Choose and open the storage backend the settings name."""

from __future__ import annotations

from pathlib import Path

from chatplane.settings import Settings
from chatplane.storage import archiving
from chatplane.storage.base import Storage, StorageError


def make_storage(settings: Settings, *, sole_writer: bool = False) -> Storage:
    """sole_writer: this process is the only one writing the store (`chatplane
    up`); the CQL backend then skips the cross-process checks of its appends."""
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
        return archiving.wrap(settings, scylla.from_settings(settings, sole_writer=sole_writer))  # type: ignore[attr-defined]
    raise StorageError(f"unknown storage backend {config.backend!r}")
