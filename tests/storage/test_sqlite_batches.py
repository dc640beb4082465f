"""The SQLite writer's fast path: a batch of appends written in bulk (a real file).

Appends of one batch queue their rows and are written with one `executemany`
per table; the dedup of a cid above every stored one skips its lookup. These
tests put resends in the same batch as their originals, resends after a
restart (the cid cache empty), and other writes between appends, and check
what each caller got and what the store holds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chatplane.storage.base import SendRequest
from chatplane.storage.sqlite import SqliteStorage


def send(conv: str, cid: int, device: str = "web") -> SendRequest:
    return SendRequest(conv, "ann", device, cid, f"m{cid}", f"id-{device}-{cid}", 1)


async def test_a_resend_in_the_batch_of_its_original_gets_the_original(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        results = await asyncio.gather(
            *(storage.append(send(conv, cid), ["ann", "bob"]) for cid in range(1, 11)),
            storage.append(send(conv, 5), ["ann", "bob"]),  # resends, queued behind
            storage.append(send(conv, 10), ["ann", "bob"]),
            storage.append(send(conv, 1, device="phone"), ["ann", "bob"]),  # another device
        )
        first = {r.message.cid: r for r in results[:10]}
        assert [r.duplicate for r in results[:10]] == [False] * 10
        for resend in results[10:12]:
            assert resend.duplicate
            original = first[resend.message.cid]
            assert (resend.message.seq, resend.message.message_id) == (
                original.message.seq, original.message.message_id)
        assert not results[12].duplicate and results[12].message.seq == 11
        history = await storage.history(conv, limit=100)
        assert [m.seq for m in history] == list(range(1, 12))
        assert [i.inbox_seq for i in await storage.inbox("bob", 0, 100)] == list(range(1, 12))
    finally:
        await storage.close()


async def test_a_resend_after_a_restart_is_still_a_duplicate(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
    for cid in (1, 2, 3):
        await storage.append(send(conv, cid), ["ann", "bob"])
    await storage.close()
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        again = await storage.append(send(conv, 2), ["ann", "bob"])
        assert again.duplicate and again.message.seq == 2
        new = await storage.append(send(conv, 4), ["ann", "bob"])
        assert not new.duplicate and new.message.seq == 4
    finally:
        await storage.close()


async def test_other_writes_between_appends_see_the_rows_before_them(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "chat.db")
    await storage.open()
    try:
        conv = (await storage.ensure_direct("ann", "bob", 1)).conversation_id
        results = await asyncio.gather(
            storage.append(send(conv, 1), ["ann", "bob"]),
            storage.append(send(conv, 2), ["ann", "bob"]),
            storage.mark_read("bob", conv, 2),  # in the same batch as the appends
            storage.append(send(conv, 3), ["ann", "bob"]),
        )
        assert [r.message.seq for r in (results[0], results[1], results[3])] == [1, 2, 3]
        assert (await storage.read_positions(conv))["bob"] == 2
        assert [i.inbox_seq for i in await storage.inbox("bob", 0, 100)] == [1, 2, 3]
    finally:
        await storage.close()
