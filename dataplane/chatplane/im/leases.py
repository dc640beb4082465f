"""Sequencing leases: which conversations this im instance may append to.

In a cluster, gateways send a conversation's requests to its owner on the
hash ring, but rings disagree for a moment whenever an instance dies, joins
or stalls. The lease makes that harmless: before its first append to a
conversation an instance takes the conversation's lease in storage
(`Storage.acquire` raises the epoch by a conditional write) and then fences
every append with that epoch; storage refuses an append whose epoch is no
longer the conversation's (`Fenced`), in the same transaction or LWT that
claims the seq. So at any moment one instance can sequence a conversation,
and a stale one (paused, partitioned, on an old ring) is refused, not timed
out.

Taking a lease drops what this instance cached about the conversation
(members, spans, recent messages): another instance may have changed it
meanwhile; then, before the first append, the previous owner's unfinished
fan-outs are finished (`recover`, im/inboxes.py), so their entries precede
the new owner's in every inbox. Losing one (a Fenced append) drops the
lease; the refused request is answered with `NotOwner`, which the im tier's
gRPC server turns into UNAVAILABLE so the gateway retries it on the next
instance of the ring.

`chatplane up` runs one sequencer over its own storage: it holds every lease
and appends unfenced (`enabled=False`), at no cost.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from chatplane.protocol.errors import ErrorCode, ProtocolError

MAX_HELD = 200_000  # leases remembered; a forgotten one is taken again when needed


class NotOwner(ProtocolError):
    """This instance lost the conversation's lease: the request did nothing
    and belongs on the conversation's new owner (retriable)."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE,
                         f"{conversation_id} is sequenced by another instance now, retry")
        self.conversation_id = conversation_id


class LeaseStore(Protocol):
    async def acquire(self, conversation_id: str, owner: str) -> int: ...


class Leases:
    def __init__(self, storage: LeaseStore, owner: str, forget: Callable[[str], None],
                 enabled: bool = True,
                 recover: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.storage = storage
        self.owner = owner
        self.forget = forget  # drops this instance's cached state of a conversation
        self.recover = recover  # finishes what the previous owner left (raises: no lease)
        self.enabled = enabled
        self._held: OrderedDict[str, int] = OrderedDict()
        self._taking: dict[str, asyncio.Future[int]] = {}  # one acquire at a time each
        self.acquired = 0
        self.lost = 0

    async def hold(self, conversation_id: str) -> tuple[int | None, bool]:
        """(the epoch to fence appends with, True if the lease was taken just
        now). None when leases are off. Raises StorageError like storage."""
        if not self.enabled:
            return None, False
        epoch = self._held.get(conversation_id)
        if epoch is not None:
            self._held.move_to_end(conversation_id)
            return epoch, False
        taking = self._taking.get(conversation_id)
        if taking is None:
            taking = asyncio.ensure_future(self._take(conversation_id))
            self._taking[conversation_id] = taking
            taking.add_done_callback(lambda done: self._took(conversation_id, done))
        return await asyncio.shield(taking), True

    def _took(self, conversation_id: str, done: asyncio.Future[int]) -> None:
        self._taking.pop(conversation_id, None)
        if not done.cancelled():
            done.exception()  # its waiters got it (or all left: the next send retries)

    async def _take(self, conversation_id: str) -> int:
        epoch = await self.storage.acquire(conversation_id, self.owner)
        self.forget(conversation_id)  # before sequencing: another owner may have changed it
        if self.recover is not None:
            await self.recover(conversation_id)
        self._held[conversation_id] = epoch
        while len(self._held) > MAX_HELD:
            self._held.popitem(last=False)
        self.acquired += 1
        return epoch

    def lose(self, conversation_id: str, epoch: int | None) -> NotOwner:
        """An append fenced with `epoch` was refused: forget that lease (not a
        newer one taken meanwhile) and what was cached with it."""
        if self._held.get(conversation_id) == epoch:
            del self._held[conversation_id]
            self.forget(conversation_id)
        self.lost += 1
        return NotOwner(conversation_id)

    @property
    def held(self) -> int:
        return len(self._held)
