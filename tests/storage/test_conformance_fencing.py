"""Conformance: sequencing leases (base.py `acquire`, `SendRequest.fence`).

An append fenced with an epoch that is no longer the conversation's lease
epoch is refused (`Fenced`) where the seq is claimed, and writes nothing; the
new epoch takes over from the head. Runs on every backend; on the CQL backend
the tiny buckets (4 seqs) make the takeovers cross timeline partitions.
"""

from __future__ import annotations

import dataclasses

import pytest

from chatplane.storage.base import (
    OWNER,
    Fenced,
    MembershipChange,
    SendRequest,
    Storage,
)
from tests.storage.conftest import Backend
from tests.storage.test_conformance import NOW, send, seqs

PAIR = ("alice", "bob")


def fenced(request: SendRequest, epoch: int) -> SendRequest:
    return dataclasses.replace(request, fence=epoch)


async def append_as(storage: Storage, conversation_id: str, epoch: int, first_cid: int,
                    count: int) -> list[int]:
    out = []
    for cid in range(first_cid, first_cid + count):
        result = await storage.append(fenced(send(conversation_id, "alice", cid), epoch), PAIR)
        out.append(result.message.seq)
    return out


async def test_each_acquire_raises_the_epoch(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    epochs = [await storage.acquire(conv, f"im-{i}") for i in range(3)]
    assert epochs == sorted(set(epochs)), "epochs must only go up"
    # a group about to be created can be leased before it exists
    assert await storage.acquire("g:new", "im-1") < await storage.acquire("g:new", "im-2")


async def test_a_stale_epoch_is_refused_and_writes_nothing(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    old = await storage.acquire(conv, "im-1")
    assert await append_as(storage, conv, old, 1, 2) == [1, 2]
    heads = [await storage.inbox_head(u) for u in PAIR]
    new = await storage.acquire(conv, "im-2")
    refused = send(conv, "alice", 3)
    with pytest.raises(Fenced):
        await storage.append(fenced(refused, old), PAIR)
    assert seqs(await storage.history(conv)) == [1, 2]
    assert [await storage.inbox_head(u) for u in PAIR] == heads
    # the same send through the new owner: stored once, a resend finds it
    first = await storage.append(fenced(refused, new), PAIR)
    again = await storage.append(fenced(refused, new), PAIR)
    assert (first.message.seq, first.duplicate) == (3, False)
    assert (again.message.seq, again.duplicate) == (3, True)
    assert [await storage.inbox_head(u) for u in PAIR] == [h + 1 for h in heads]


async def test_the_fence_holds_across_timeline_partitions(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    first = await storage.acquire(conv, "im-1")
    assert await append_as(storage, conv, first, 1, 3) == [1, 2, 3]
    second = await storage.acquire(conv, "im-2")
    assert await append_as(storage, conv, second, 10, 6) == list(range(4, 10))
    with pytest.raises(Fenced):  # the old owner, wherever the head now is
        await append_as(storage, conv, first, 4, 1)
    third = await storage.acquire(conv, "im-1")  # ownership moves back
    with pytest.raises(Fenced):
        await append_as(storage, conv, second, 20, 1)
    assert await append_as(storage, conv, third, 30, 4) == list(range(10, 14))
    assert seqs(await storage.history(conv, limit=50)) == list(range(1, 14))


async def test_a_stale_owner_cannot_open_the_next_partition(storage: Storage) -> None:
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    old = await storage.acquire(conv, "im-1")
    await append_as(storage, conv, old, 1, 2)
    new = await storage.acquire(conv, "im-2")
    await append_as(storage, conv, new, 10, 2)  # fills the first partition (CQL: 4 seqs)
    with pytest.raises(Fenced):  # its next seq would open the second one
        await append_as(storage, conv, old, 3, 1)
    assert await append_as(storage, conv, new, 12, 1) == [5]


async def test_a_taker_on_another_instance_fences_the_first(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()  # two processes, one database
    conv = (await one.ensure_direct(*PAIR, NOW)).conversation_id
    old = await one.acquire(conv, "im-1")
    assert await append_as(one, conv, old, 1, 3) == [1, 2, 3]
    new = await two.acquire(conv, "im-2")
    with pytest.raises(Fenced):
        await append_as(one, conv, old, 4, 1)
    assert await append_as(two, conv, new, 4, 3) == [4, 5, 6]
    assert seqs(await one.history(conv, limit=50)) == list(range(1, 7))


async def test_a_stale_membership_change_is_refused(storage: Storage) -> None:
    group = "g:fenced"
    old = await storage.acquire(group, "im-1")
    create = MembershipChange(create=True, name="Team", add=(("alice", OWNER),))
    await storage.apply_membership(group, create, fenced(send(group, "alice", 1), old))
    new = await storage.acquire(group, "im-2")
    with pytest.raises(Fenced):
        await storage.apply_membership(group, MembershipChange(add=(("bob", "member"),)),
                                       fenced(send(group, "alice", 2), old))
    assert [m.user_id for m in await storage.members(group)] == ["alice"]
    added = await storage.apply_membership(group, MembershipChange(add=(("bob", "member"),)),
                                           fenced(send(group, "alice", 2), new))
    assert added.message.seq == 2
    assert [m.user_id for m in await storage.members(group)] == ["alice", "bob"]


async def test_unfenced_appends_are_not_checked(storage: Storage) -> None:
    """One process owning everything (`chatplane up`) appends without a fence."""
    conv = (await storage.ensure_direct(*PAIR, NOW)).conversation_id
    await storage.acquire(conv, "im-1")
    result = await storage.append(send(conv, "alice", 1), PAIR)
    assert result.message.seq == 1
