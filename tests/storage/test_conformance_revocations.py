"""The Storage conformance suite, token revocations (auth.py, docs/operations.md).

Same `backend` fixture as test_conformance.py (SQLite and ScyllaDB): a
revocation is durable (a new instance reads it), one row per (user, device),
and the latest cutoff wins even when an older one is written after it.
"""

from __future__ import annotations

from chatplane.storage.base import ANY, Revocation, Storage
from tests.storage.conftest import Backend

NOW_MS = 1_790_000_000_000


def by_key(rows: list[Revocation]) -> dict[tuple[str, str], int]:
    return {(r.user_id, r.device_id): r.before_ms for r in rows}


async def test_no_revocations_at_first(storage: Storage) -> None:
    assert await storage.revocations() == []


async def test_revocations_are_durable_and_keyed(backend: Backend) -> None:
    storage = await backend.open()
    await storage.put_revocation(Revocation("alice", "phone", NOW_MS))
    await storage.put_revocation(Revocation("bob", ANY, NOW_MS + 1))
    await storage.put_revocation(Revocation(ANY, ANY, NOW_MS + 2))
    await backend.close_all()
    again = await backend.open()
    assert by_key(await again.revocations()) == {
        ("alice", "phone"): NOW_MS, ("bob", ANY): NOW_MS + 1, (ANY, ANY): NOW_MS + 2}


async def test_the_latest_cutoff_wins(storage: Storage) -> None:
    await storage.put_revocation(Revocation("alice", "phone", NOW_MS + 10))
    await storage.put_revocation(Revocation("alice", "phone", NOW_MS))  # late and older
    assert by_key(await storage.revocations()) == {("alice", "phone"): NOW_MS + 10}
    await storage.put_revocation(Revocation("alice", "phone", NOW_MS + 20))
    assert by_key(await storage.revocations()) == {("alice", "phone"): NOW_MS + 20}
