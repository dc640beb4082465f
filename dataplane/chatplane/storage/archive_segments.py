"""The cold tier's files: zstd segments of archived messages and their listing.

A segment holds a contiguous run of one conversation's messages, compressed
with zstd (one frame; JSON lines inside, payloads in base64). Its name is
its index entry: `seg/<conversation hex>/<first seq>-<last seq>-<newest
sent_at_ms>.zst`, so listing one conversation's prefix is its index, and two
archivers that write the same range write the same object (no read-modify-
write of a shared index file that a race could lose). Retention replaces a
segment by an empty `exp/<conversation hex>/<first>-<last>` marker, so a read
knows those seqs were archived and then expired.

`SegmentStore` is what the archive needs of a place to keep files;
`DirSegments` keeps them under a directory (the data dir for `up`), written
to a temporary name, fsynced and renamed; `S3Segments`
(storage/archive_s3.py) keeps them in an S3-compatible bucket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import zstandard

from chatplane.storage.base import StoredMessage

ZSTD_LEVEL = 3  # zstd's default: 6 gave 0.4% fewer bytes for 1.6x the time (docs/benchmarks.md)


class SegmentStore(Protocol):
    """Whole-object storage: the data dir, or S3-compatible object storage."""

    async def put(self, name: str, data: bytes) -> None: ...

    async def get(self, name: str) -> bytes | None: ...

    async def names(self, prefix: str) -> list[str]: ...

    async def delete(self, name: str) -> None: ...

    async def check(self) -> None:
        """At start: raise StorageUnavailable if the place cannot be used."""

    async def close(self) -> None: ...


@dataclass(frozen=True, order=True)
class Entry:
    """One archived range of a conversation: a segment, or an expired range."""

    first: int
    last: int
    newest_ms: int
    name: str
    expired: bool = False


def conversation_key(conversation_id: str) -> str:
    return conversation_id.encode().hex()  # ids may hold ':' and '/'


def segment_name(conversation_id: str, first: int, last: int, newest_ms: int) -> str:
    return f"seg/{conversation_key(conversation_id)}/{first:012d}-{last:012d}-{newest_ms}.zst"


def expired_name(conversation_id: str, first: int, last: int) -> str:
    return f"exp/{conversation_key(conversation_id)}/{first:012d}-{last:012d}"


def parse_entry(name: str) -> Entry | None:
    """The entry a listed name stands for; None for anything else (temp files)."""
    kind, _, rest = name.partition("/")
    base = rest.rpartition("/")[2]
    parts = base.removesuffix(".zst").split("-")
    try:
        if kind == "seg" and base.endswith(".zst") and len(parts) == 3:
            return Entry(int(parts[0]), int(parts[1]), int(parts[2]), name)
        if kind == "exp" and len(parts) == 2:
            return Entry(int(parts[0]), int(parts[1]), 0, name, expired=True)
    except ValueError:
        return None
    return None


async def entries(store: SegmentStore, conversation_id: str) -> list[Entry]:
    """The conversation's index: every archived range, sorted by first seq."""
    key = conversation_key(conversation_id)
    found = [parse_entry(n) for n in
             await store.names(f"seg/{key}/") + await store.names(f"exp/{key}/")]
    return sorted(e for e in found if e is not None)


def encode(messages: list[StoredMessage]) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(records(messages))


def records(messages: list[StoredMessage]) -> bytes:
    """The segment's content before compression: one JSON array per message."""
    lines = [json.dumps([m.seq, m.message_id, m.sender, m.sender_device, m.cid, m.text,
                         m.sent_at_ms, base64.b64encode(m.payload).decode(), m.content_type],
                        ensure_ascii=False, separators=(",", ":"))
             for m in messages]
    return "\n".join(lines).encode()


def decode(conversation_id: str, data: bytes) -> list[StoredMessage]:
    text = zstandard.ZstdDecompressor().decompress(data).decode()
    out = []
    for line in text.split("\n"):
        seq, message_id, sender, device, cid, body, sent_at, payload, content_type = (
            json.loads(line))
        out.append(StoredMessage(conversation_id, seq, message_id, sender, device, cid, body,
                                 sent_at, base64.b64decode(payload), content_type))
    return out


class DirSegments:
    """Segments as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad segment name {name!r}")
        return self.root / name

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, self._path(name), data)

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)  # readers see the whole segment or none
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def get(self, name: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(name).read_bytes)
        except FileNotFoundError:
            return None

    async def names(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))

        def listing() -> list[str]:
            try:
                return [f"{prefix}{p.name}" for p in folder.iterdir()
                        if not p.name.startswith(".")]
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(listing)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._path(name).unlink, True)

    async def check(self) -> None:
        """Nothing to check: the directory is made at the first write."""

    async def close(self) -> None:
        """Nothing to close."""
