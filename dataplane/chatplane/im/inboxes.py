"""One writer per inbox: a message's entries for users served elsewhere (cluster only).

Every user's inbox sequence (`inbox_seq`) is written by one instance, the
user's owner on the im ring (the owner of "u:<user>", im/forward.py), the
way a conversation's seqs are written by its owner: two instances writing
one inbox would take its sequence from each other (docs/storage.md, "One
writer per inbox"). So the conversation's owner appends a message with the
entries of its own users (`Storage.append(..., inboxes)`) and the others'
owners write theirs (`Im.FanOut`, one call per owner per batch); an owner
that does not answer is written around here (correct, at the cost of a take
of each of its inboxes). The sender's ack waits for every entry.

Entries of one conversation must reach each inbox in seq order (a device
that meets a conversation's first message starts the conversation there).
So each conversation has a queue of tickets here, one per append, taken in
the order the appends are handed to storage (which sequences them in that
order), and fanned out strictly in that order, a batch of consecutive
tickets at a time. A user owed by a ticket still in the queue gets no entry
from a later append directly (it is owed there too, so its entries stay in
order when the ring moves the user here), and after a group change still in
the queue every later append owes everything. A fan-out that fails leaves
its entries as the queue's debt, written first by the next batch (its
senders get a retriable error; their resends find the messages and fan
them out again, idempotently).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatplane.protocol.bounds import MAX_FANOUT_ENTRIES
from chatplane.storage.base import AppendResult, InboxItem, Storage, StorageUnavailable

log = logging.getLogger("chatplane.im.inboxes")

MAX_QUEUED = 16  # appends of one conversation waiting for their fan-out (CQL recovery looks 32 back)
MAX_BATCH = 64  # tickets fanned out together
MAX_DEBT = 10_000  # entries kept after failed fan-outs (beyond: left to the resends)


class InboxRing(Protocol):
    """Who writes which inbox, and asking them (im/forward.py `ImRing`)."""

    async def inbox_owners(self, users: Iterable[str]) -> dict[str, str]: ...

    async def fan_out(self, address: str, conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]],
                      fresh: Collection[int]) -> bool: ...


class Delivery(Protocol):
    def deliver(self, items: Iterable[InboxItem]) -> int: ...


@dataclass(eq=False)
class Ticket:
    """One append's place in its conversation's fan-out order."""

    defers: frozenset[str]  # recipients whose entries the append leaves owed
    defer_all: bool  # a group change: later appends owe every recipient until it is done
    seq: int = 0
    owed: tuple[str, ...] = ()
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # appended, or failed
    failed: bool = False
    fresh: bool = False  # its entries were never asked for before (not a duplicate)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(eq=False)
class Queue:
    tickets: deque[Ticket] = field(default_factory=deque)
    room: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_QUEUED))
    debt: dict[int, set[str]] = field(default_factory=dict)  # seq -> users owed after a failure
    runner: asyncio.Task[None] | None = None
    users: int = 0  # appends between `enter` and `leave`


class Inboxes:
    def __init__(self, storage: Storage, ring: InboxRing, state: Delivery) -> None:
        self.storage = storage
        self.ring = ring
        self.state = state
        self._queues: dict[str, Queue] = {}
        self._here: dict[str, _Turn] = {}  # conversation -> its writes here, in turn
        self.recovered = 0  # messages fanned out again after taking their conversation

    async def remote(self, users: Iterable[str]) -> dict[str, str]:
        """user -> owner address, for the users whose inboxes another instance writes."""
        return await self.ring.inbox_owners(users)

    async def enter(self, conversation_id: str) -> Queue:
        """A place among the conversation's unfinished appends (waits while
        MAX_QUEUED are: their fan-out bounds what a taker must look at)."""
        queue = self._queues.get(conversation_id)
        if queue is None:
            queue = self._queues[conversation_id] = Queue()
        queue.users += 1
        try:
            await queue.room.acquire()
        except BaseException:
            self._leave(conversation_id, queue)
            raise
        return queue

    def leave(self, conversation_id: str, queue: Queue) -> None:
        queue.room.release()
        self._leave(conversation_id, queue)

    def _leave(self, conversation_id: str, queue: Queue) -> None:
        queue.users -= 1
        self._drop_if_idle(conversation_id, queue)

    def _drop_if_idle(self, conversation_id: str, queue: Queue) -> None:
        if (not queue.users and not queue.tickets and not queue.debt
                and self._queues.get(conversation_id) is queue):
            del self._queues[conversation_id]

    def ticket(self, queue: Queue, recipients: Sequence[str], remote: Collection[str], *,
               group_change: bool) -> tuple[Ticket, frozenset[str]]:
        """Call right before handing the append to storage (no await in
        between: the queue's order is storage's order). Returns the ticket and
        the recipients whose entries the append writes now."""
        pending = set().union(*queue.debt.values()) if queue.debt else set()
        defer_all = False
        for earlier in queue.tickets:
            if earlier.failed:
                continue
            defer_all = defer_all or earlier.defer_all
            pending |= earlier.defers | set(earlier.owed)
        now = frozenset() if defer_all else frozenset(
            user for user in recipients if user not in remote and user not in pending)
        ticket = Ticket(defers=frozenset(recipients) - now, defer_all=group_change)
        queue.tickets.append(ticket)
        return ticket, now

    def appended(self, conversation_id: str, queue: Queue, ticket: Ticket,
                 result: AppendResult | None, recipients: Sequence[str]) -> None:
        """The append's outcome (None: it failed; nothing is owed by it here:
        a resend finds the message and fans it out again)."""
        if result is None:
            ticket.failed = True
        elif result.duplicate:
            # whether the original fan-out finished is unknown: do it again
            ticket.seq, ticket.owed = result.message.seq, tuple(recipients)
        else:
            ticket.seq, ticket.owed, ticket.fresh = result.message.seq, result.owed, True
        ticket.settled.set()
        if queue.runner is None:
            queue.runner = asyncio.get_running_loop().create_task(self._run(conversation_id, queue))

    async def _run(self, conversation_id: str, queue: Queue) -> None:
        """Fan out the queue's tickets in order, a batch at a time."""
        try:
            while queue.tickets:
                await queue.tickets[0].settled.wait()
                batch: list[Ticket] = []
                for ticket in queue.tickets:
                    if len(batch) == MAX_BATCH or not ticket.settled.is_set():
                        break
                    batch.append(ticket)
                # in the queue until written: later appends see what they owe
                await self._fan_out_batch(conversation_id, queue, batch)
                for _ in batch:
                    queue.tickets.popleft()
        finally:
            queue.runner = None
            self._drop_if_idle(conversation_id, queue)

    async def _fan_out_batch(self, conversation_id: str, queue: Queue,
                             batch: list[Ticket]) -> None:
        owed: dict[int, set[str]] = {seq: set(users) for seq, users in queue.debt.items()}
        fresh = set()
        for ticket in batch:
            if not ticket.failed and ticket.owed:
                owed.setdefault(ticket.seq, set()).update(ticket.owed)
                if ticket.fresh:
                    fresh.add(ticket.seq)
        fresh -= queue.debt.keys()  # asked before, and failed: look for what it wrote
        error: BaseException | None = None
        if owed:
            try:
                await self.fan_out(conversation_id, sorted(owed.items()), fresh)
                await self.storage.fanned_out(conversation_id, sorted(owed))
                queue.debt.clear()
            except Exception as exc:  # storage, or the ring's lookups: the same retry
                log.warning("fan-out of %s failed, left to the next batch and resends: %s",
                            conversation_id, exc)
                error = StorageUnavailable(f"fan-out of {conversation_id} failed, retry: {exc}")
                queue.debt = owed if sum(map(len, owed.values())) <= MAX_DEBT else {}
            except BaseException:
                error = StorageUnavailable(f"fan-out of {conversation_id} cut short")
                queue.debt = owed
                for ticket in batch:
                    _settle(ticket, error)
                raise
        for ticket in batch:
            _settle(ticket, error if not ticket.failed else None)

    async def fan_out(self, conversation_id: str,
                      entries: Sequence[tuple[int, Collection[str]]],
                      fresh: Collection[int] = frozenset()) -> None:
        """Entries (seq ascending) written by their inboxes' owners, or here
        for an owner that cannot be reached; each owner's in one call. `fresh`:
        the seqs nobody was asked for before (written without a look)."""
        users = {user for _, group in entries for user in group}
        owners = await self.remote(users)
        by_owner: dict[str, list[tuple[int, list[str]]]] = {}
        here: list[tuple[int, list[str]]] = []
        for seq, group in entries:
            mine = sorted(user for user in group if user not in owners)
            if mine:
                here.append((seq, mine))
            for address in sorted({owners[user] for user in group if user in owners}):
                by_owner.setdefault(address, []).append(
                    (seq, sorted(user for user in group if owners.get(user) == address)))
        answers = await asyncio.gather(*(self._ask(address, conversation_id, part, fresh)
                                         for address, part in by_owner.items()))
        asked = set()
        for part, answered in zip(by_owner.values(), answers, strict=True):
            if not answered:  # written here, taking those inboxes: correct, and counted
                here += part
                asked |= {seq for seq, _ in part}  # the owner may have written some
        if here:
            merged: dict[int, set[str]] = {}
            for seq, group in here:
                merged.setdefault(seq, set()).update(group)
            await self.fan_out_here(conversation_id, [(seq, sorted(group))
                                                      for seq, group in sorted(merged.items())],
                                    frozenset(fresh) - asked)

    async def _ask(self, address: str, conversation_id: str,
                   entries: Sequence[tuple[int, Sequence[str]]], fresh: Collection[int]) -> bool:
        """One owner's entries, in calls within the call's bound (a debt can
        grow past one), in order; False from the first one not answered."""
        for i in range(0, len(entries), MAX_FANOUT_ENTRIES):
            if not await self.ring.fan_out(address, conversation_id,
                                           entries[i:i + MAX_FANOUT_ENTRIES], fresh):
                return False
        return True

    async def recover(self, conversation_id: str) -> None:
        """This instance just took the conversation's lease: fan out again
        what its previous owner may have left unfinished (idempotent), before
        this one appends, so those entries come first in every inbox."""
        left = await self.storage.unfinished(conversation_id)
        if left:
            await self.fan_out(conversation_id, left)
            await self.storage.fanned_out(conversation_id, [seq for seq, _ in left])
            self.recovered += len(left)

    async def fan_out_here(self, conversation_id: str,
                           entries: Sequence[tuple[int, Sequence[str]]],
                           fresh: Collection[int] = frozenset()) -> int:
        """Write (or find) entries under this instance's inbox holders and
        deliver them; the number of entries. One conversation's run one at a
        time: a call asked again after its first try broke (im/forward.py)
        looks for the entries once the first try's write, which may not look
        (`fresh`), is done, so it finds them instead of writing them twice."""
        turn = self._here.get(conversation_id)
        if turn is None:
            turn = self._here[conversation_id] = _Turn()
        turn.users += 1
        try:
            async with turn.lock:
                items = await self.storage.fan_out(conversation_id, entries, fresh)
        finally:
            turn.users -= 1
            if not turn.users and self._here.get(conversation_id) is turn:
                del self._here[conversation_id]
        if items:
            self.state.deliver(items)
        return len(items)


@dataclass(eq=False)
class _Turn:
    """One conversation's writes here (`Inboxes.fan_out_here`), in turn."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def _settle(ticket: Ticket, error: BaseException | None) -> None:
    if ticket.done.done():
        return
    if error is None:
        ticket.done.set_result(None)
    else:
        ticket.done.set_exception(error)
        ticket.done.exception()  # a sender that stopped waiting leaves it unread
