"""One writer per inbox (im/inboxes.py), through `Sequencer.appended` on a real
SQLite store shared by two im services, as `cluster up` shares it. The ring
between them is in process (an `InboxRing` whose fan-out calls the other
service, with delays, silences and failures on demand), so each test sets
the interleaving it names: a conversation's entries reach every inbox in seq
order and once, the sender's append returns only after every entry is
durable, an owner that does not answer is written around, a user that moves
to this instance mid-stream keeps its order, and a failed fan-out is finished
first by the next batch."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from pathlib import Path

import pytest

from chatplane.im.service import ImService
from chatplane.settings import Limits
from chatplane.storage.base import (
    AppendResult,
    InboxItem,
    SendRequest,
    StorageUnavailable,
    StoredMessage,
)
from chatplane.storage.sqlite import SqliteStorage

PAIR = ("alice", "bob")


class Pushes:
    """The state tier: what each service handed over for delivery."""

    def __init__(self) -> None:
        self.items: list[InboxItem] = []

    def deliver(self, items: Iterable[InboxItem]) -> int:
        items = list(items)
        self.items += items
        return len(items)

    def deliver_group(self, conversation_id: str, members: Sequence[str],
                      message: StoredMessage) -> None:
        pass


class Ring:
    """Two instances; `owner[user]` says who writes a user's inbox."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {"alice": "im-1", "bob": "im-2"}
        self.services: dict[str, ImService] = {}
        self.delay_s = 0.0
        self.silent = False  # the other owner does not answer
        self.calls: list[tuple[str, list[int]]] = []

    def view(self, me: str) -> RingView:
        return RingView(self, me)


class RingView:
    def __init__(self, ring: Ring, me: str) -> None:
        self.ring, self.me = ring, me
        self.kept = 0

    async def owns(self, conversation_id: str) -> bool:
        return True

    async def append_event(self, request: SendRequest) -> bool:
        return False

    async def inbox_owners(self, users: Iterable[str]) -> dict[str, str]:
        return {u: self.ring.owner[u] for u in users if self.ring.owner[u] != self.me}

    async def fan_out(self, address: str, conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]],
                      fresh: Collection[int]) -> bool:
        self.ring.calls.append((address, [seq for seq, _ in entries]))
        await asyncio.sleep(random.uniform(0, self.ring.delay_s))
        if self.ring.silent:
            self.kept += 1
            return False
        inboxes = self.ring.services[address].sequencer.inboxes
        assert inboxes is not None
        await inboxes.fan_out_here(conversation_id, entries, fresh)
        return True


Cluster = tuple[Ring, ImService, ImService, Pushes, Pushes]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    ring = Ring()
    pushes = (Pushes(), Pushes())
    services = []
    for name, push in zip(("im-1", "im-2"), pushes, strict=True):
        storage = SqliteStorage(tmp_path / "chat.db", shared=True)
        await storage.open()
        services.append(ImService(storage, push, Limits(), server_id=name,
                                  owners=ring.view(name)))
        ring.services[name] = services[-1]
    await services[0].storage.ensure_direct(*PAIR, 0)
    yield ring, services[0], services[1], pushes[0], pushes[1]
    for service in services:
        await service.storage.close()


async def send(im: ImService, cid: int, conversation_id: str = "d:alice:bob") -> AppendResult:
    request = SendRequest(conversation_id=conversation_id, sender="alice", sender_device="phone",
                          cid=cid, text=f"m{cid}", message_id=f"m{cid}", sent_at_ms=cid)
    return await im.sequencer.appended(conversation_id, PAIR, lambda fence, inboxes: (
        im.storage.append(request, PAIR, inboxes)), take_back=False)


async def inbox(im: ImService, user: str) -> list[int]:
    """The conversation seqs of the user's inbox, in inbox order."""
    return [item.message.seq for item in await im.storage.inbox(user, 0, 1000)]


async def test_concurrent_sends_reach_the_other_owners_inbox_in_order(cluster: Cluster) -> None:
    ring, im1, im2, _, pushed2 = cluster
    ring.delay_s = 0.02
    results = await asyncio.gather(*(send(im1, cid) for cid in range(1, 41)))
    assert sorted(r.message.seq for r in results) == list(range(1, 41))
    # every append returned after its entry for bob was durable
    assert await inbox(im2, "bob") == list(range(1, 41))
    assert await inbox(im1, "alice") == list(range(1, 41))
    # written by bob's owner, asked in seq order, one call per batch
    asked = [seq for _, seqs in ring.calls for seq in seqs]
    assert asked == sorted(asked) and len(ring.calls) < 40
    assert sorted(i.message.seq for i in pushed2.items) == list(range(1, 41))


async def test_an_owner_that_does_not_answer_is_written_around(cluster: Cluster) -> None:
    ring, im1, im2, pushed1, _ = cluster
    ring.silent = True
    await asyncio.gather(*(send(im1, cid) for cid in range(1, 11)))
    assert await inbox(im2, "bob") == list(range(1, 11))
    # bob's entries delivered from here (alice's go with the append: `Sequencer.deliver`)
    assert sorted(i.message.seq for i in pushed1.items if i.user_id == "bob") == list(range(1, 11))
    view = im1.sequencer.owners
    assert isinstance(view, RingView) and view.kept > 0


async def test_a_user_moving_here_mid_stream_keeps_its_order(cluster: Cluster) -> None:
    ring, im1, _, _, _ = cluster
    ring.delay_s = 0.2  # bob's owner is slow: its fan-outs are still queued below
    first = [asyncio.ensure_future(send(im1, cid)) for cid in range(1, 6)]
    await asyncio.sleep(0.05)
    ring.owner["bob"] = "im-1"  # the ring moves bob here: later appends could write him at once
    later = [asyncio.ensure_future(send(im1, cid)) for cid in range(6, 11)]
    await asyncio.gather(*first, *later)
    assert await inbox(im1, "bob") == list(range(1, 11))


async def test_a_failed_fan_out_fails_its_senders_and_is_finished_first(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    ring, im1, im2, _, _ = cluster
    inboxes = im2.sequencer.inboxes
    assert inboxes is not None
    real = inboxes.fan_out_here

    async def broken(conversation_id: str, entries: Sequence[tuple[int, Sequence[str]]]) -> int:
        raise StorageUnavailable("bob's owner cannot write now")

    monkeypatch.setattr(inboxes, "fan_out_here", broken)
    ring.silent = False
    # bob's owner fails and so does im-1's own attempt: the store refuses bob
    im1_inboxes = im1.sequencer.inboxes
    assert im1_inboxes is not None
    monkeypatch.setattr(im1_inboxes, "fan_out_here", broken)
    with pytest.raises(StorageUnavailable):
        await send(im1, 1)
    assert await inbox(im2, "bob") == []
    monkeypatch.setattr(inboxes, "fan_out_here", real)
    monkeypatch.undo()
    # the next send writes the debt first, then its own entry
    await send(im1, 2)
    assert await inbox(im2, "bob") == [1, 2]
    # the resend of the failed one finds its message and its entry: nothing twice
    again = await send(im1, 1)
    assert again.duplicate and await inbox(im2, "bob") == [1, 2]


async def test_the_next_owner_finishes_what_its_previous_owner_left(cluster: Cluster) -> None:
    ring, im1, im2, _, pushed2 = cluster
    # im-1 stored message 1 with alice's entry, then died before bob's owner wrote his
    request = SendRequest(conversation_id="d:alice:bob", sender="alice", sender_device="phone",
                          cid=1, text="m1", message_id="m1", sent_at_ms=1)
    left = await im1.storage.append(request, PAIR, inboxes={"alice"})
    assert left.owed == ("bob",)
    ring.owner["alice"] = "im-2"  # the ring gives everyone to the survivor
    im2.sequencer.leases.enabled = True  # (a cluster's ims take leases: the take recovers)
    await send(im2, 2)
    assert await inbox(im2, "bob") == [1, 2]
    assert await inbox(im2, "alice") == [1, 2]
    assert im2.sequencer.inboxes is not None and im2.sequencer.inboxes.recovered == 1
    assert [i.message.seq for i in pushed2.items if i.user_id == "bob"][:1] == [1]
