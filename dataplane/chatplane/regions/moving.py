"""Admin moves of a conversation's home (docs/architecture.md, "Moving a home"): the
admin API of the region that should sequence a conversation takes its home from the
region that does, under traffic, without a seq ever naming two messages.

The new home may give out seq n+1 only once it holds seq n and everything before it, so
the old home must stop first and the new home must catch up before it takes over:

1. The new home calls `Region.HandOff` on the old one, which stops sequencing the
   conversation (sends are refused UNAVAILABLE: clients retry) and answers its row and
   its log head read after it stopped (once the other peers applied it, below); what it
   sequenced before is at or below it.
2. The new home waits until it applied the old home's log to that head
   (regions/replication.py), and checks it holds the conversation's newest seq.
3. It writes its row at the old epoch + 1, confirmed (`storage.base.home_replaces`:
   it beats the old row in every store, as a failover's does), offers it to every peer,
   the old home first, and tells the old home the move is over.

A send the old home was sequencing as it stopped lands past that head: the new home
does not apply it (regions/replication.py skips a home's entries under an epoch it no
longer holds), the old home neither acks nor pushes it (`Homes.moved_past`) nor serves
it to any peer until the move is over (`Homes.held_back`: a third region would push it
at a seq the new home gives out); the device's resend reaches the new home. Each step
has a deadline: a move not finished is given up (the old home resumes), and the old
home refuses sends for at most `homes.MOVE_HOLD_S`, then checks its row with the peers
before it sequences again, so a new home that took over without the old one hearing is
found then. The new home takes over only within half that hold, measured from before
it asked.

With more than two regions the old home answers the hand-off only once every other
live peer applied its log to the head (`Region.Applied`): once the row moves, its log
no longer serves them the conversation, and the new home's log serves only what was
sequenced after the move, so a third region short of the head would keep a hole.

Moves of different conversations may run at once. Two moves of one conversation would
both take it at the same epoch: the second is refused (`MoveConflict`, 409) while the
first is under way, by the new home if it is taking it already, by the old home if it
is handing it off to another region; a hand-off is resumed only by the region it goes
to, so the refused caller's clean-up leaves the first move alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.regions.homes import MOVE_HOLD_S, Homes, home_of, home_row, homed
from chatplane.storage.base import CONVERSATION_HOME, Home, ReplicatedLog, Storage
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

HAND_OFF_TIMEOUT_S = 5.0  # one Region.HandOff call
THIRD_PEERS_S = 3.0  # the old home waits this long for the other peers to apply its head
CATCH_UP_S = 10.0  # the new home applies the old home's log to its head within this
POLL_S = 0.05


def _row(home: Home | None) -> rpb.HomeRow:
    return rpb.HomeRow() if home is None else home_row(home)


def _refused(code: ErrorCode, message: str) -> ProtocolError:
    return ProtocolError(code, message)


class MoveConflict(ProtocolError):
    """A move refused because another move of the same home is under way (the admin
    API answers 409; Region.HandOff aborts ABORTED): retry once that one is over. Two
    moves of one home at once would both take it at the same epoch."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)


async def guarded_move(homes: Homes, under_way: set[str], key: str, row: Home | None,
                       what: str, answer: Callable[[Home], dict[str, Any]],
                       move: Callable[[Home], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """What a chat's and a user's move check before taking `key`'s home here (`what`
    names it in the errors): known, settled, a peer's, no other move of it under way
    here (MoveConflict); then `move`, marked under way while it runs."""
    me = homes.region
    if row is None:
        raise _refused(ErrorCode.NOT_FOUND, f"no home is known for {what}")
    if row.region == me and row.confirmed:
        return answer(row)
    if not row.confirmed:
        raise _refused(ErrorCode.UNAVAILABLE, f"the home of {what} is not settled yet: retry")
    if row.region not in homes.peers:
        raise _refused(ErrorCode.INVALID_ARGUMENT, f"the home of {what} is region"
                       f" {row.region}, not a peer of this region")
    if key in under_way:
        raise MoveConflict(f"a move of {what} to region {me} is under way: retry once it"
                           " is over")
    under_way.add(key)
    try:
        return await move(row)
    finally:
        under_way.discard(key)



async def others_apply(homes: Homes, new_home: str, head: int) -> list[str]:
    """The old home's wait, in a chat's move and in a user's (regions/user_moves.py):
    until every live peer but the new home applied this region's log to `head` (they
    tell it with Region.Applied); returns those that did not in time. Once the row
    moves, this region's log no longer serves them the conversation (or the user's
    inbox entries: it serves only the homes it holds), and the new home's log starts
    after the move: what they lack below the head would be a hole for good."""
    durability = homes.durability
    others = [peer for peer in homes.peers if peer != new_home and peer not in homes.lost]
    if durability is None or not others:
        return []
    deadline = time.monotonic() + THIRD_PEERS_S
    while True:
        behind = [peer for peer in others if peer not in durability.peers
                  or durability.peers[peer].applied_to < head]
        if not behind or time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(POLL_S)


@dataclass
class Moves:
    """Both sides of an admin move: `move_here` on the new home, `hand_off` on the old."""

    homes: Homes
    storage: Storage
    log: ReplicatedLog  # this store's log (the same object as `storage`)
    applied_to: Callable[[str], int]  # peer -> how far its log is applied here
    moved_here: int = 0
    handed_off: int = 0
    # conversations this region is taking (one move of a home at a time from here)
    under_way: set[str] = field(default_factory=set)

    # -- the old home's side (Region.HandOff) -----------------------------------

    async def hand_off(self, request: rpb.HandOffRequest) -> rpb.HandOffReply:
        key = request.key
        if request.resume:
            self.homes.resume(key, by=request.region)
            return rpb.HandOffReply(home=_row(await self.homes.stored(CONVERSATION_HOME, key)))
        under_way = self.homes.handing_off_to(key)
        if under_way is not None and under_way != request.region:
            raise MoveConflict(f"the home of {key!r} is being moved to region {under_way}:"
                               " retry once that move is over")
        # first: what is sequenced from now on is past the head
        self.homes.hand_off(key, request.region)
        row = await self.homes.stored(CONVERSATION_HOME, key)
        if row is None or row.region != self.homes.region or not row.confirmed:
            self.homes.resume(key)  # not ours to hand off: the caller learns the row
            return rpb.HandOffReply(home=_row(row))
        # the seq first: what commits between the two reads is at or below the head
        # (applied by the new home), what commits after is past it (never acked here)
        conversation = await self.storage.conversation(key)
        head = await self.log.log_head()
        self.homes.handed_off_at(key, head)
        self.handed_off += 1
        behind = await others_apply(self.homes, request.region, head)
        if behind:
            self.homes.resume(key)
            raise _refused(ErrorCode.UNAVAILABLE, f"region {', '.join(behind)} did not apply"
                           f" this region's log to {head} in {THIRD_PEERS_S:.0f}s: not handed"
                           " off")
        log.info("handing the home of %s off to %s (log head %d)", key, request.region, head)
        return rpb.HandOffReply(home=_row(row), log_head=head,
                                head_seq=0 if conversation is None else conversation.head_seq)

    # -- the new home's side (the admin API) ------------------------------------

    async def move_here(self, conversation_id: str) -> dict[str, Any]:
        """Take the home of `conversation_id` here; what the admin API answers."""
        homes = self.homes
        if not homed(conversation_id):
            raise _refused(ErrorCode.INVALID_ARGUMENT,
                           f"field conversation_id: {conversation_id!r} has no home region")
        row = await homes.stored(CONVERSATION_HOME, conversation_id)
        return await guarded_move(homes, self.under_way, conversation_id, row,
                                  repr(conversation_id),
                                  lambda held: self._answer(conversation_id, held, moved=False),
                                  lambda held: self._move(conversation_id, held))

    async def _move(self, conversation_id: str, row: Home) -> dict[str, Any]:
        homes, me = self.homes, self.homes.region
        old = row.region
        started = time.monotonic()
        stub = rgrpc.RegionStub(homes.channels(old))
        try:
            reply = await stub.HandOff(rpb.HandOffRequest(
                region=me, kind=CONVERSATION_HOME, key=conversation_id),
                timeout=HAND_OFF_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ABORTED:  # another move of it: not ours to end
                raise MoveConflict(str(exc.details())) from exc
            # it may have stopped: told to resume (else it does after MOVE_HOLD_S)
            await self._resume(stub, old, conversation_id)
            raise _refused(ErrorCode.UNAVAILABLE, f"home region {old} of {conversation_id!r}"
                           f" did not hand it off: {exc.code().name} {exc.details()}") from exc
        theirs = home_of(reply.home)
        if theirs != row:  # it holds another row (a move or failover meanwhile)
            await self._resume(stub, old, conversation_id)  # it may have stopped for it
            if theirs.region:
                await homes.learn(CONVERSATION_HOME, conversation_id, theirs)
            raise _refused(ErrorCode.UNAVAILABLE, f"region {old} holds home {theirs.region}"
                           f" epoch {theirs.epoch} for {conversation_id!r}: retry")
        try:
            taken = await self._take(old, conversation_id, row, reply, started)
        except BaseException:
            await self._resume(stub, old, conversation_id)
            raise
        holding = await self._tell(conversation_id, taken, old)
        if old in holding:
            await self._resume(stub, old, conversation_id)
        # else the old home refuses it until MOVE_HOLD_S, then checks with the peers
        self.moved_here += 1
        log.info("home of %s moved here from %s (epoch %d)", conversation_id, old, taken.epoch)
        return self._answer(conversation_id, taken, moved=True, moved_from=old,
                            took_s=round(time.monotonic() - started, 3))

    async def _take(self, old: str, conversation_id: str, row: Home,
                    reply: rpb.HandOffReply, started: float) -> Home:
        deadline = started + min(CATCH_UP_S, MOVE_HOLD_S / 2)
        while self.applied_to(old) < reply.log_head:
            if time.monotonic() >= deadline:
                raise _refused(ErrorCode.UNAVAILABLE,
                               f"region {old}'s log not applied here to {reply.log_head} in"
                               f" {CATCH_UP_S:.0f}s (at {self.applied_to(old)}): move given up")
            await asyncio.sleep(POLL_S)
        conversation = await self.storage.conversation(conversation_id)
        have = 0 if conversation is None else conversation.head_seq
        if have < reply.head_seq:  # cannot happen once the log is applied: never take it
            raise _refused(ErrorCode.UNAVAILABLE, f"{conversation_id!r} is at seq {have} here,"
                           f" {reply.head_seq} in region {old}: move given up")
        if time.monotonic() >= started + MOVE_HOLD_S / 2:  # the old home may resume soon
            raise _refused(ErrorCode.UNAVAILABLE, "the move took too long: given up")
        taken = Home(self.homes.region, row.epoch + 1, True)
        self.homes.resume(conversation_id)  # a hand-off of it from here before: over
        stored = await self.homes.learn(CONVERSATION_HOME, conversation_id, taken)
        if stored != taken:
            raise _refused(ErrorCode.UNAVAILABLE, f"this store keeps home {stored.region}"
                           f" epoch {stored.epoch} for {conversation_id!r}: retry")
        return taken

    async def _tell(self, conversation_id: str, taken: Home, old: str) -> set[str]:
        """Every peer is offered the new row; returns those that hold it. Best effort:
        the old home checks its row with the peers before it sequences again, and
        replication carries the row to the others."""
        holding = set()
        # the old home first: holding the row, its log holds nothing of the chat back any
        # more (it serves none of it), without waiting for the others' answers
        for peer in sorted(self.homes.peers, key=lambda peer: peer != old):
            stub = rgrpc.RegionStub(self.homes.channels(peer))
            try:
                answer = await stub.OfferHome(rpb.HomeOffer(
                    region=self.homes.region, kind=CONVERSATION_HOME, key=conversation_id,
                    home=taken.region, epoch=taken.epoch, confirmed=True),
                    timeout=HAND_OFF_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                log.warning("peer %s did not hear that %s moved here: %s", peer,
                            conversation_id, exc.code().name)
                continue
            if home_of(answer) == taken:
                holding.add(peer)
        return holding

    async def _resume(self, stub: rgrpc.RegionStub, old: str, conversation_id: str) -> None:
        try:
            await stub.HandOff(rpb.HandOffRequest(region=self.homes.region,
                                                  kind=CONVERSATION_HOME, key=conversation_id,
                                                  resume=True), timeout=HAND_OFF_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("region %s was not told the move of %s is over: %s", old,
                        conversation_id, exc.code().name)

    def families(self) -> Iterator[Metric]:
        yield metrics.counter("chatplane_region_homes_moved_here_total",
                              "conversations whose home an admin call moved to this region",
                              self.moved_here)
        yield metrics.counter("chatplane_region_homes_handed_off_total",
                              "conversations this region stopped sequencing for an admin move"
                              " (taken by another region, or given up)", self.handed_off)

    def _answer(self, conversation_id: str, row: Home, *, moved: bool,
                **extra: Any) -> dict[str, Any]:
        return {"conversation_id": conversation_id, "home": row.region, "epoch": row.epoch,
                "moved": moved, **extra}
