"""Conformance: split fan-out (base.py `append(..., inboxes)`, `fan_out`, `fanned_out`).

In a cluster each user's inbox is written by one instance, the user's owner
(docs/storage.md, "One writer per inbox"): the conversation's owner appends a
message with the entries of its own users and leaves the others `owed`; their
owners write them with `fan_out`, which is idempotent (a retried or repeated
fan-out finds the entries) and keeps each inbox in seq order. On the CQL
backend the tiny buckets (4 entries) make the fan-outs cross inbox partitions,
and a second store instance plays the other process.
"""

from __future__ import annotations

import dataclasses

import pytest

from chatplane.storage.base import (
    OWNER,
    MembershipChange,
    SendRequest,
    Storage,
    StorageUnavailable,
)
from tests.storage.conftest import Backend
from tests.storage.test_conformance import NOW, send

PAIR = ("alice", "bob")


async def refs(storage: Storage, user: str) -> list[tuple[int, str, int]]:
    """(inbox_seq, conversation, seq) of the user's whole inbox."""
    return [(i.inbox_seq, i.message.conversation_id, i.message.seq)
            for i in await storage.inbox(user, 0, 1000)]


async def test_owed_recipients_get_no_entry_until_fanned_out(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    first = await storage.append(send(conv, "alice", 1), PAIR, inboxes={"alice"})
    assert [i.user_id for i in first.inbox] == ["alice"]
    assert first.owed == ("bob",)
    assert await storage.inbox_head("bob") == 0
    items = await storage.fan_out(conv, [(1, ["bob"])])
    assert [(i.user_id, i.inbox_seq, i.message.message_id) for i in items] == [
        ("bob", 1, first.message.message_id)]
    await storage.fanned_out(conv, [1])
    # every recipient written at once (the default) owes nothing
    whole = await storage.append(send(conv, "alice", 2), PAIR)
    assert whole.owed == () and {i.user_id for i in whole.inbox} == set(PAIR)
    assert await refs(storage, "bob") == [(1, conv, 1), (2, conv, 2)]


async def test_fan_out_is_idempotent(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    for cid in (1, 2, 3):
        await storage.append(send(conv, "alice", cid), PAIR, inboxes=())
    once = await storage.fan_out(conv, [(1, ["bob"]), (2, ["bob", "alice"])])
    again = await storage.fan_out(conv, [(1, ["bob"]), (2, ["bob", "alice"]), (3, ["bob"])])
    key = [(i.user_id, i.inbox_seq, i.message.seq) for i in once]
    assert [(i.user_id, i.inbox_seq, i.message.seq) for i in again][:3] == key
    assert await refs(storage, "bob") == [(1, conv, 1), (2, conv, 2), (3, conv, 3)]
    assert await refs(storage, "alice") == [(1, conv, 2)]


async def test_fresh_entries_are_written_in_order_and_found_by_a_later_retry(
        storage: Storage) -> None:
    """`fresh` seqs (never asked for before) are written without a look; a
    retry of them (not fresh) finds those entries instead of adding more."""
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    for cid in range(1, 7):  # across inbox buckets on CQL
        await storage.append(send(conv, "alice", cid), PAIR, inboxes={"alice"})
    first = await storage.fan_out(conv, [(seq, ["bob"]) for seq in range(1, 7)],
                                  fresh=range(1, 7))
    assert [(i.inbox_seq, i.message.seq) for i in first] == [(n, n) for n in range(1, 7)]
    retried = await storage.fan_out(conv, [(seq, ["bob"]) for seq in range(4, 7)])
    assert [(i.inbox_seq, i.message.seq) for i in retried] == [(n, n) for n in range(4, 7)]
    assert [seq for _, _, seq in await refs(storage, "bob")] == list(range(1, 7))


async def test_fan_out_writes_each_inbox_in_seq_order(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    for cid in range(1, 10):  # across inbox buckets on CQL
        await storage.append(send(conv, "alice", cid), PAIR, inboxes={"alice"})
    # given out of order: written ascending
    await storage.fan_out(conv, [(seq, ["bob"]) for seq in (5, 3, 4, 1, 2)])
    await storage.fan_out(conv, [(seq, ["bob"]) for seq in range(6, 10)])
    assert [seq for _, _, seq in await refs(storage, "bob")] == list(range(1, 10))
    assert [n for n, _, _ in await refs(storage, "bob")] == list(range(1, 10))


async def test_a_duplicate_owes_nothing_and_fan_out_finds_the_original(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    request: SendRequest = send(conv, "alice", 1)
    first = await storage.append(request, PAIR, inboxes={"alice"})
    again = await storage.append(request, PAIR, inboxes={"alice"})
    assert again.duplicate and again.owed == () and again.inbox == ()
    # the resend's caller cannot know whether the fan-out finished: it runs it again
    await storage.fan_out(conv, [(first.message.seq, PAIR)])
    await storage.fan_out(conv, [(first.message.seq, PAIR)])
    assert await refs(storage, "alice") == [(1, conv, 1)]
    assert await refs(storage, "bob") == [(1, conv, 1)]


async def test_a_group_change_owes_like_a_message(storage: Storage) -> None:
    event = SendRequest(conversation_id="g:one", sender="alice", sender_device="im-x", cid=1,
                        text="", message_id="m-create", sent_at_ms=NOW,
                        content_type="system/group")
    change = MembershipChange(create=True, name="one", add=(("alice", OWNER), ("bob", "member")))
    result = await storage.apply_membership("g:one", change, event, inboxes={"bob"})
    assert [i.user_id for i in result.inbox] == ["bob"]
    assert result.owed == ("alice",)
    assert {m.user_id for m in await storage.members("g:one")} == set(PAIR)
    await storage.fan_out("g:one", [(result.message.seq, result.owed)])
    await storage.fanned_out("g:one", [result.message.seq])
    assert await refs(storage, "alice") == [(1, "g:one", 1)]


async def test_the_inbox_owner_fans_out_what_the_conversation_owner_stored(
        backend: Backend) -> None:
    if backend.name == "sqlite":
        pytest.skip("one SQLite store instance per file (cluster processes open it shared)")
    owner = await backend.open()  # sequences the conversation and alice's inbox
    other = await backend.open()  # sequences bob's inbox
    conv = (await owner.ensure_direct(*PAIR, NOW)).conversation_id
    epoch = await owner.acquire(conv, "im-1")
    events = (await other.ensure_events("bob", NOW)).conversation_id
    for cid in range(1, 7):
        request = send(conv, "alice", cid)
        result = await owner.append(dataclasses.replace(request, fence=epoch), PAIR,
                                    inboxes={"alice"})
        assert result.owed == ("bob",)
        await other.fan_out(conv, [(result.message.seq, result.owed)])
        await owner.fanned_out(conv, [result.message.seq])
        # bob's own events go on in between, through the same writer of his inbox
        await other.append(send(events, "bob", cid, device="im-2"), ["bob"])
    got = await refs(other, "bob")
    assert [n for n, _, _ in got] == list(range(1, 13))
    assert [seq for _, c, seq in got if c == conv] == list(range(1, 7))
    # neither inbox was taken by the other writer: alice's by owner, bob's by other
    assert [seq for _, _, seq in await refs(owner, "alice")] == list(range(1, 7))


async def test_a_taker_finishes_a_fan_out_left_unfinished(backend: Backend) -> None:
    if backend.name == "sqlite":
        pytest.skip("SQLite: the sender's resend finishes it (im/inboxes.py)")
    first = await backend.open()
    conv = (await first.ensure_direct(*PAIR, NOW)).conversation_id
    await first.acquire(conv, "im-1")
    result = await first.append(send(conv, "alice", 1), PAIR, inboxes={"alice"})
    assert result.owed == ("bob",)
    # the owner dies before anyone fans out to bob: the next owner finishes it
    second = await backend.open()
    await second.acquire(conv, "im-2")
    assert await refs(second, "bob") == [(1, conv, 1)]
    # and the late fan-out of the first owner's request finds it
    await second.fan_out(conv, [(1, ["bob"])])
    assert await refs(second, "bob") == [(1, conv, 1)]


async def test_unfinished_names_what_is_owed_until_fanned_out(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    await storage.append(send(conv, "alice", 1), PAIR)
    owed = await storage.append(send(conv, "alice", 2), PAIR, inboxes={"alice"})
    left = dict(await storage.unfinished(conv))
    assert "bob" in left[owed.message.seq]
    # the new owner's pass: fan out what is named, then mark it
    for seq, users in await storage.unfinished(conv):
        await storage.fan_out(conv, [(seq, users)])
    await storage.fanned_out(conv, [seq for seq, _ in await storage.unfinished(conv)])
    await storage.append(send(conv, "alice", 3), PAIR)
    assert owed.message.seq not in dict(await storage.unfinished(conv))
    # nothing twice, nothing missing, in order
    assert await refs(storage, "bob") == [(1, conv, 1), (2, conv, 2), (3, conv, 3)]
    assert await refs(storage, "alice") == [(1, conv, 1), (2, conv, 2), (3, conv, 3)]


async def test_fan_out_of_a_seq_not_stored_is_retriable(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    await storage.append(send(conv, "alice", 1), PAIR, inboxes={"alice"})
    # never "nothing to do": an acked message must not lose its entry to a read
    with pytest.raises(StorageUnavailable):
        await storage.fan_out(conv, [(1, ["bob"]), (7, ["bob"])])
    await storage.fan_out(conv, [(1, ["bob"])])
    assert await refs(storage, "bob") == [(1, conv, 1)]
