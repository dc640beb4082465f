"""The Storage conformance suite: one behaviour, every backend (base.py's contract).

Runs unchanged against each backend of the `backend` fixture (conftest.py):
SQLite, and the ScyllaDB backend on a real CQL server. Conversations, seqs,
idempotent resends, inboxes, history pages, durability across a reopen,
concurrency and users.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from chatplane.storage.base import (
    DIRECT,
    AppendResult,
    ConversationNotFound,
    SendRequest,
    Storage,
    StoredMessage,
    direct_conversation_id,
)
from tests.storage.conftest import Backend

NOW = 1_700_000_000_000


def send(conversation_id: str, sender: str, cid: int, text: str = "", *,
         device: str = "phone", payload: bytes = b"", content_type: str = "text") -> SendRequest:
    return SendRequest(
        conversation_id=conversation_id, sender=sender, sender_device=device, cid=cid,
        text=text or f"{sender}/{device}#{cid}", message_id=f"m-{sender}-{device}-{cid}",
        sent_at_ms=NOW + cid, payload=payload, content_type=content_type)


async def say(storage: Storage, conversation_id: str, sender: str, count: int, *,
              first_cid: int = 1, recipients: Sequence[str] = ()) -> list[AppendResult]:
    return [await storage.append(send(conversation_id, sender, first_cid + i), recipients)
            for i in range(count)]


def seqs(messages: Sequence[StoredMessage]) -> list[int]:
    return [m.seq for m in messages]


async def test_backend_is_a_storage(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    assert storage.name


# -- conversations ----------------------------------------------------------

async def test_ensure_direct_is_idempotent_and_symmetric(storage: Storage) -> None:
    first = await storage.ensure_direct("bob", "alice", NOW)
    again = await storage.ensure_direct("alice", "bob", NOW + 5000)
    assert first.conversation_id == direct_conversation_id("alice", "bob") == "d:alice:bob"
    assert again.conversation_id == first.conversation_id
    assert first.kind == again.kind == DIRECT
    assert first.members == again.members == ("alice", "bob")
    assert again.created_at_ms == first.created_at_ms == NOW
    assert first.head_seq == again.head_seq == 0
    assert await storage.conversation(first.conversation_id) == again


async def test_unknown_conversation(storage: Storage) -> None:
    assert await storage.conversation("d:nobody:noone") is None
    with pytest.raises(ConversationNotFound):
        await storage.append(send("d:nobody:noone", "nobody", 1), ["nobody", "noone"])
    assert await storage.history("d:nobody:noone") == []


# -- sequencing and idempotence -----------------------------------------------

async def test_append_assigns_contiguous_seqs_from_one(storage: Storage) -> None:
    conv = await storage.ensure_direct("alice", "bob", NOW)
    results = await say(storage, conv.conversation_id, "alice", 9, recipients=["alice", "bob"])
    assert [r.message.seq for r in results] == list(range(1, 10))
    assert not any(r.duplicate for r in results)
    found = await storage.conversation(conv.conversation_id)
    assert found is not None and found.head_seq == 9


async def test_message_fields_round_trip(storage: Storage) -> None:
    conv = await storage.ensure_direct("alice", "bob", NOW)
    request = send(conv.conversation_id, "alice", 7, "héllo ✓ 世界", device="laptop",
                   payload=b"\x00\xffbin", content_type="image/png")
    result = await storage.append(request, ["alice", "bob"])
    stored = result.message
    assert (stored.conversation_id, stored.seq, stored.message_id, stored.sender,
            stored.sender_device, stored.cid, stored.text, stored.sent_at_ms, stored.payload,
            stored.content_type) == (
        conv.conversation_id, 1, request.message_id, "alice", "laptop", 7, "héllo ✓ 世界",
        request.sent_at_ms, b"\x00\xffbin", "image/png")
    assert await storage.history(conv.conversation_id) == [stored]
    assert [i.message for i in await storage.inbox("bob", 0, 10)] == [stored]


async def test_resend_returns_the_original(storage: Storage) -> None:
    conv = await storage.ensure_direct("alice", "bob", NOW)
    cid = conv.conversation_id
    original = await storage.append(send(cid, "alice", 1, "first"), ["alice", "bob"])
    resend = SendRequest(cid, "alice", "phone", 1, "changed text", "other-id", NOW + 99)
    again = await storage.append(resend, ["alice", "bob"])
    assert again.duplicate and not original.duplicate
    assert again.message == original.message
    assert again.inbox == ()
    assert seqs(await storage.history(cid)) == [1]
    assert await storage.inbox_head("bob") == 1
    # The key is (conversation, sender, device, cid): change any part, get a new message.
    other_device = await storage.append(send(cid, "alice", 1, device="laptop"), ["bob"])
    other_sender = await storage.append(send(cid, "bob", 1), ["alice"])
    assert (other_device.message.seq, other_sender.message.seq) == (2, 3)
    conv2 = await storage.ensure_direct("alice", "carol", NOW)
    other_conv = await storage.append(send(conv2.conversation_id, "alice", 1), ["carol"])
    assert (other_conv.message.seq, other_conv.duplicate) == (1, False)


async def test_concurrent_appends_to_one_conversation(storage: Storage) -> None:
    conv = await storage.ensure_direct("alice", "bob", NOW)
    cid = conv.conversation_id
    requests = [send(cid, sender, n) for n in range(1, 16) for sender in ("alice", "bob")]
    results = await asyncio.gather(*(storage.append(r, ["alice", "bob"]) for r in requests))
    assert sorted(r.message.seq for r in results) == list(range(1, 31))
    assert {(r.message.sender, r.message.cid) for r in results} == {
        (r.sender, r.cid) for r in requests}
    history = await storage.history(cid, limit=100)
    assert seqs(history) == list(range(1, 31))
    for user in ("alice", "bob"):
        inbox = await storage.inbox(user, 0, 100)
        assert [i.inbox_seq for i in inbox] == list(range(1, 31))
        assert [i.message.seq for i in inbox] == list(range(1, 31)), "inbox follows seq order"


async def test_concurrent_resends_make_one_message(storage: Storage) -> None:
    conv = await storage.ensure_direct("alice", "bob", NOW)
    request = send(conv.conversation_id, "alice", 42)
    results = await asyncio.gather(*(storage.append(request, ["alice", "bob"])
                                     for _ in range(6)))
    assert [r.duplicate for r in results].count(False) == 1
    assert {r.message.seq for r in results} == {1}
    assert await storage.inbox_head("bob") == 1


# -- inboxes -----------------------------------------------------------------

async def test_inbox_is_contiguous_per_user_across_conversations(storage: Storage) -> None:
    ab = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
    ac = (await storage.ensure_direct("alice", "carol", NOW)).conversation_id
    expected: dict[str, list[tuple[str, int]]] = {"alice": [], "bob": [], "carol": []}
    for n in range(1, 8):
        conv, other = (ab, "bob") if n % 3 else (ac, "carol")
        result = await storage.append(send(conv, "alice", n), ["alice", other])
        assert [i.user_id for i in result.inbox] == ["alice", other], "one per recipient, in order"
        for item in result.inbox:
            assert item.message == result.message
            expected[item.user_id].append((conv, result.message.seq))
            assert item.inbox_seq == len(expected[item.user_id])
    for user, refs in expected.items():
        inbox = await storage.inbox(user, 0, 100)
        assert [i.inbox_seq for i in inbox] == list(range(1, len(refs) + 1))
        assert [(i.message.conversation_id, i.message.seq) for i in inbox] == refs
        assert all(i.user_id == user for i in inbox)
        assert await storage.inbox_head(user) == len(refs)
    assert await storage.inbox_head("nobody") == 0
    assert await storage.inbox("nobody", 0, 10) == []


async def test_inbox_pages(storage: Storage) -> None:
    conv = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
    await say(storage, conv, "alice", 11, recipients=["bob"])
    assert [i.inbox_seq for i in await storage.inbox("bob", 0, 5)] == [1, 2, 3, 4, 5]
    assert [i.inbox_seq for i in await storage.inbox("bob", 3, 6)] == [4, 5, 6, 7, 8, 9]
    assert [i.inbox_seq for i in await storage.inbox("bob", 8, 100)] == [9, 10, 11]
    assert await storage.inbox("bob", 11, 10) == []
    assert await storage.inbox("bob", 50, 10) == []
    assert await storage.inbox("bob", 0, 0) == []
    pages, cursor = [], 0
    while page := await storage.inbox("bob", cursor, 3):
        pages.append([i.inbox_seq for i in page])
        cursor = page[-1].inbox_seq
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11]]
    assert await storage.inbox_head("alice") == 0, "the sender is not a recipient here"


# -- history -----------------------------------------------------------------

async def test_history_pages_both_ways(storage: Storage) -> None:
    conv = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
    await say(storage, conv, "alice", 13, recipients=["bob"])
    assert seqs(await storage.history(conv)) == list(range(1, 14))
    assert seqs(await storage.history(conv, limit=5)) == [9, 10, 11, 12, 13]
    assert seqs(await storage.history(conv, before_seq=6, limit=3)) == [3, 4, 5]
    assert seqs(await storage.history(conv, before_seq=2)) == [1]
    assert await storage.history(conv, before_seq=1) == []
    assert seqs(await storage.history(conv, before_seq=10_000, limit=2)) == [12, 13]
    assert seqs(await storage.history(conv, after_seq=0, limit=5)) == [1, 2, 3, 4, 5]
    assert seqs(await storage.history(conv, after_seq=5, limit=100)) == list(range(6, 14))
    assert seqs(await storage.history(conv, after_seq=3, before_seq=8)) == [4, 5, 6, 7]
    assert seqs(await storage.history(conv, after_seq=3, before_seq=8, limit=2)) == [4, 5]
    assert await storage.history(conv, after_seq=13) == []
    assert await storage.history(conv, after_seq=4, before_seq=5) == []
    assert await storage.history(conv, limit=0) == []

    backward: list[int] = []
    before: int | None = None
    while page := await storage.history(conv, before_seq=before, limit=4):
        backward = seqs(page) + backward
        before = page[0].seq
    forward: list[int] = []
    after = 0
    while page := await storage.history(conv, after_seq=after, limit=4):
        forward += seqs(page)
        after = page[-1].seq
    assert backward == forward == list(range(1, 14))


# -- durability and users ------------------------------------------------------

async def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    first = await backend.open()
    conv = (await first.ensure_direct("alice", "bob", NOW)).conversation_id
    sent = await say(first, conv, "alice", 6, recipients=["alice", "bob"])
    await first.put_user("alice", "Alice", NOW)
    history = await first.history(conv)
    inbox = await first.inbox("bob", 0, 100)
    await first.close()
    backend.opened.remove(first)

    second = await backend.open()
    assert await second.history(conv) == history == [r.message for r in sent]
    assert await second.inbox("bob", 0, 100) == inbox
    assert await second.inbox_head("bob") == 6
    found = await second.conversation(conv)
    assert found is not None and found.head_seq == 6 and found.members == ("alice", "bob")
    assert (await second.get_user("alice") or {}).get("display_name") == "Alice"
    resend = await second.append(send(conv, "alice", 3), ["alice", "bob"])
    assert resend.duplicate and resend.message == sent[2].message
    more = await second.append(send(conv, "bob", 1), ["alice", "bob"])
    assert (more.message.seq, [i.inbox_seq for i in more.inbox]) == (7, [7, 7])


async def test_store_id_is_kept_with_the_data(backend: Backend) -> None:
    first = await backend.open()
    assert len(first.store_id) >= 16
    second = await backend.open()  # another process on the same data
    assert second.store_id == first.store_id
    await first.close()
    backend.opened.remove(first)
    third = await backend.open()
    assert third.store_id == first.store_id


async def test_users(storage: Storage) -> None:
    assert await storage.get_user("alice") is None
    await storage.put_user("alice", "Alice", NOW)
    await storage.put_user("bob", "Bob", NOW)
    alice = await storage.get_user("alice")
    assert alice is not None
    assert (alice["user_id"], alice["display_name"]) == ("alice", "Alice")
    await storage.put_user("alice", "Alice L.", NOW + 1)
    renamed = await storage.get_user("alice")
    assert renamed is not None and renamed["display_name"] == "Alice L."
    assert (await storage.get_user("bob") or {}).get("display_name") == "Bob"
