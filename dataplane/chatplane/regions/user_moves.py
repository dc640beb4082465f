"""Admin moves of a user's home (docs/architecture.md, "Moving a user's home"): the admin
API of the region that should write a user's inbox sequence takes the user's home from
the region that does, under traffic, without an inbox_seq lost, written twice or left
as a gap.

A user's inbox is written by the home only: a region that stores a message writes the
entries of the users it homes and records the others' as owed (`inbox_owed`) until
their home's entry arrives through its log. So a move has the chat move's three steps
(regions/moving.py), on the inbox:

1. **Hold.** The new home calls `Region.HandOff` (kind `user`) on the old one, which
   stops writing the user's inbox entries (`UserMoveStore.hold_inbox`: from then on a
   message stored there records the user's entry as owed, as for a user homed
   elsewhere; senders are not refused) and refuses the user's events and relations
   records (`Homes.hold_user`), then answers its log head and the user's inbox head,
   read after the hold: every entry it wrote is at or below that head. With more than
   two regions it answers only once every other live peer applied its log to that
   head (`moving.others_apply`): once the row moves its log serves them the user's
   entries no more. The user's events sequenced there past the head are served to no
   peer until the move is over (`Homes.held_back`).
2. **Catch-up.** The new home waits until it applied the old home's log to that head,
   so it holds every entry the old home wrote.
3. **Take.** In one transaction (`take_user_home`) the new home checks it holds the
   inbox to the old home's inbox head, writes the user's row at the old epoch + 1,
   confirmed (it beats the old row in every store, `storage.base.home_replaces`),
   moves the user's timelines (`u:<user>`, `r:<user>`) with it, and writes the entries
   still owed here: the messages it stored that the old home never wrote an entry for
   (stored there during the hold, or not yet). Then it offers the rows to every peer,
   the old home first, and tells the old home the move is over (`resume`): the old
   home writes nothing for the user from then on; its owed rows are deleted as the new
   home's entries arrive.

Given up (the old home does not answer, the catch-up takes more than 10 s, the inbox
is short), the old home is told to resume: it writes the entries owed during the hold
(`release_inbox`), in the order it stored them per conversation, and goes on. It holds
for at most `homes.MOVE_HOLD_S`, then checks its row with the peers before it writes
the user's entries again; the new home takes only within half that hold. A second
move of the same user while one is under way is refused (`MoveConflict`, 409).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.regions.homes import MOVE_HOLD_S, Homes, home_of, home_row
from chatplane.regions.moving import THIRD_PEERS_S, MoveConflict, guarded_move, others_apply
from chatplane.storage.base import (
    CONVERSATION_HOME,
    USER_HOME,
    Home,
    InboxItem,
    StorageUnavailable,
    StoredMessage,
    valid_id,
)
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

HAND_OFF_TIMEOUT_S = 5.0  # one Region.HandOff or OfferHome call
CATCH_UP_S = 10.0  # the new home applies the old home's log to its head within this
POLL_S = 0.05
RELEASE_RETRY_S = 0.5  # a hold not released (storage, a silent peer): tried again

# The entries a move wrote, to this region's devices (`Sequencer.replicated`).
Deliver = Callable[[Sequence[StoredMessage], Sequence[InboxItem]], Awaitable[None]]


@runtime_checkable
class UserMoveStore(Protocol):
    """What the embedded store does for a user's move (storage/sqlite_moves.py)."""

    async def hold_inbox(self, user_id: str) -> tuple[int, int]:
        """Stop writing the user's inbox entries (owed from now on); (log head, the
        user's inbox head), read after the hold."""

    async def release_inbox(self, user_id: str) -> list[InboxItem]:
        """Write the user's entries again if still homed here, the owed ones first."""

    async def take_user_home(self, user_id: str, taken: Home, inbox_head: int,
                             timelines: Sequence[str]) -> tuple[Home | None, list[InboxItem]]:
        """The user's row (and timelines) taken, owed entries written, in one
        transaction, only when the inbox here reaches `inbox_head` (None: it does not)."""


def timelines(user_id: str) -> tuple[str, str]:
    """The timelines homed with a user: its events and its relations records."""
    return f"u:{user_id}", f"r:{user_id}"


def _refused(code: ErrorCode, message: str) -> ProtocolError:
    return ProtocolError(code, message)


@dataclass
class UserMoves:
    """Both sides of a user's move: `move_here` on the new home, `hand_off` on the old."""

    homes: Homes
    store: UserMoveStore
    applied_to: Callable[[str], int]  # peer -> how far its log is applied here
    deliver: Deliver
    moved_here: int = 0
    handed_off: int = 0
    _watchdogs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # users this region is taking (one move of a home at a time from here)
    under_way: set[str] = field(default_factory=set)

    # -- the old home's side (Region.HandOff, kind "user") ----------------------

    async def hand_off(self, request: rpb.HandOffRequest) -> rpb.HandOffReply:
        user = request.key
        if request.resume:
            under_way = self.homes.user_handing_off_to(user)
            if not under_way or under_way == request.region:  # else not the caller's move
                await self._release(user)
            return rpb.HandOffReply(home=self._row(await self.homes.stored(USER_HOME, user)))
        under_way = self.homes.user_handing_off_to(user)
        if under_way is not None and under_way != request.region:
            raise MoveConflict(f"the home of user {user!r} is being moved to region"
                               f" {under_way}: retry once that move is over")
        # first: events sequenced from now on are past the head
        self.homes.hold_user(user, request.region)
        row = await self.homes.stored(USER_HOME, user)
        if row is None or row.region != self.homes.region or not row.confirmed:
            self.homes.release_user(user)  # not ours: the caller learns the row
            return rpb.HandOffReply(home=self._row(row))
        try:
            head, inbox_head = await self.store.hold_inbox(user)
        except StorageUnavailable:
            await self._release(user)
            raise
        self.homes.user_held_at(user, head)
        self.handed_off += 1
        self._watch(user)
        # a third region must hold every entry of the user's at or below the head
        # before the row moves: this log then serves it the user's entries no more
        behind = await others_apply(self.homes, request.region, head)
        if behind:
            await self._release(user)
            raise _refused(ErrorCode.UNAVAILABLE, f"region {', '.join(behind)} did not apply"
                           f" this region's log to {head} in {THIRD_PEERS_S:.0f}s: not handed"
                           " off")
        log.info("handing the home of user %s off to %s (log head %d, inbox head %d)", user,
                 request.region, head, inbox_head)
        return rpb.HandOffReply(home=home_row(row), log_head=head, head_seq=inbox_head)

    def _watch(self, user: str) -> None:
        """A move not over within MOVE_HOLD_S: the row is checked with the peers (the new
        home may have taken it without telling us), then the hold released."""
        old = self._watchdogs.pop(user, None)
        if old is not None:
            old.cancel()
        self._watchdogs[user] = asyncio.ensure_future(self._expire(user))

    async def _expire(self, user: str) -> None:
        await asyncio.sleep(MOVE_HOLD_S)
        log.warning("the move of user %s's home was not finished in %.0fs: its row is checked"
                    " with the peers before its inbox is written here again", user, MOVE_HOLD_S)
        while True:
            try:
                row = await self.homes.stored(USER_HOME, user)
                if row is not None and row.region == self.homes.region:
                    for peer in self.homes.peers:
                        if peer not in self.homes.lost:
                            answer = await self._offer(peer, user, row)
                            if answer != row:
                                await self.homes.learn(USER_HOME, user, answer)
                self._watchdogs.pop(user, None)  # this task ends here: not cancelled by it
                await self._release(user)
                return
            except (grpc.aio.AioRpcError, StorageUnavailable) as exc:
                log.warning("user %s: the row is not checked yet (%s): still held", user, exc)
                await asyncio.sleep(RELEASE_RETRY_S)

    async def _release(self, user: str) -> None:
        """The move is over (or given up): the inbox written here again if the user is
        still homed here, what was owed meanwhile first."""
        watchdog = self._watchdogs.pop(user, None)
        if watchdog is not None:
            watchdog.cancel()
        for attempt in range(20):
            try:
                items = await self.store.release_inbox(user)
                break
            except StorageUnavailable as exc:
                log.warning("user %s: the inbox hold not released (%s): again", user, exc)
                if attempt == 19:
                    raise
                await asyncio.sleep(RELEASE_RETRY_S)
        await self._timelines_follow(user)
        self.homes.release_user(user)
        if items:
            self.homes.committed()  # in the log: the peers' readers want them
            await self.deliver((), items)

    async def _timelines_follow(self, user: str) -> None:
        """The user's row here is another region's now (the move is over): its
        timelines' rows held here follow it, so this log serves none of what they
        sequenced past the head, even when the new home's offers of them were lost."""
        try:
            row = await self.homes.stored(USER_HOME, user)
            if row is None or row.region == self.homes.region or not row.confirmed:
                return
            for timeline in timelines(user):
                held = await self.homes.stored(CONVERSATION_HOME, timeline)
                if held is not None and held.region == self.homes.region:
                    await self.homes.learn(CONVERSATION_HOME, timeline, row)
        except StorageUnavailable as exc:
            log.warning("user %s: its timelines' rows not moved here (%s)", user, exc)

    # -- the new home's side (the admin API) ------------------------------------

    async def move_here(self, user: str) -> dict[str, Any]:
        """Take the home of `user`'s inbox here; what the admin API answers."""
        homes = self.homes
        if not valid_id(user):
            raise _refused(ErrorCode.INVALID_ARGUMENT,
                           "field user_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        row = await homes.stored(USER_HOME, user)
        return await guarded_move(homes, self.under_way, user, row, f"user {user!r}",
                                  lambda held: self._answer(user, held, moved=False),
                                  lambda held: self._move(user, held))

    async def _move(self, user: str, row: Home) -> dict[str, Any]:
        homes, me = self.homes, self.homes.region
        old = row.region
        started = time.monotonic()
        stub = rgrpc.RegionStub(homes.channels(old))
        try:
            reply = await stub.HandOff(rpb.HandOffRequest(region=me, kind=USER_HOME, key=user),
                                       timeout=HAND_OFF_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ABORTED:  # another move of the user: not ours
                raise MoveConflict(str(exc.details())) from exc
            await self._resume(stub, old, user)  # it may have stopped
            raise _refused(ErrorCode.UNAVAILABLE, f"home region {old} of user {user!r} did not"
                           f" hand it off: {exc.code().name} {exc.details()}") from exc
        theirs = home_of(reply.home)
        if theirs != row:  # it holds another row (a move or failover meanwhile)
            await self._resume(stub, old, user)
            if theirs.region:
                await homes.learn(USER_HOME, user, theirs)
            raise _refused(ErrorCode.UNAVAILABLE, f"region {old} holds home {theirs.region}"
                           f" epoch {theirs.epoch} for user {user!r}: retry")
        try:
            taken, items = await self._take(old, user, row, reply, started)
        except BaseException:
            await self._resume(stub, old, user)
            raise
        homes.forget_user(user)  # the rows cached before the take: read back, as stored now
        for kind, key in ((USER_HOME, user), *((CONVERSATION_HOME, t) for t in timelines(user))):
            await homes.stored(kind, key)
        if items:
            homes.committed()  # the owed entries are in the log: the peers' readers want them
            await self.deliver((), items)
        holding = await self._tell(user, taken, old)
        if old in holding:
            await self._resume(stub, old, user)
        self.moved_here += 1
        log.info("home of user %s moved here from %s (epoch %d, %d owed entries written)", user,
                 old, taken.epoch, len(items))
        return self._answer(user, taken, moved=True, moved_from=old,
                            took_s=round(time.monotonic() - started, 3),
                            owed_written=len(items))

    async def _take(self, old: str, user: str, row: Home, reply: rpb.HandOffReply,
                    started: float) -> tuple[Home, list[InboxItem]]:
        deadline = started + min(CATCH_UP_S, MOVE_HOLD_S / 2)
        while self.applied_to(old) < reply.log_head:
            if time.monotonic() >= deadline:
                raise _refused(ErrorCode.UNAVAILABLE,
                               f"region {old}'s log not applied here to {reply.log_head} in"
                               f" {CATCH_UP_S:.0f}s (at {self.applied_to(old)}): move given up")
            await asyncio.sleep(POLL_S)
        if time.monotonic() >= started + MOVE_HOLD_S / 2:  # the old home may resume soon
            raise _refused(ErrorCode.UNAVAILABLE, "the move took too long: given up")
        taken = Home(self.homes.region, row.epoch + 1, True)
        stored, items = await self.store.take_user_home(user, taken, reply.head_seq,
                                                        timelines(user))
        if stored is None:  # cannot happen once the log is applied: never take it
            raise _refused(ErrorCode.UNAVAILABLE, f"user {user!r}'s inbox here is short of"
                           f" {reply.head_seq} (region {old}'s): move given up")
        if stored != taken:
            raise _refused(ErrorCode.UNAVAILABLE, f"this store keeps home {stored.region}"
                           f" epoch {stored.epoch} for user {user!r}: retry")
        return taken, items

    async def _tell(self, user: str, taken: Home, old: str) -> set[str]:
        """Every peer is offered the new rows (the user's, its timelines'); returns
        those that hold the user's. Best effort: the old home checks its row with the
        peers before it writes the user's inbox again, and the new home's log carries
        the row to the others."""
        holding = set()
        for peer in sorted(self.homes.peers, key=lambda peer: peer != old):  # the old first
            try:
                if await self._offer(peer, user, taken) == taken:
                    holding.add(peer)
                for timeline in timelines(user):
                    if await self.homes.stored(CONVERSATION_HOME, timeline) == taken:
                        await self._offer(peer, timeline, taken, CONVERSATION_HOME)
            except grpc.aio.AioRpcError as exc:
                log.warning("peer %s did not hear that user %s moved here: %s", peer, user,
                            exc.code().name)
        return holding

    async def _offer(self, peer: str, key: str, row: Home, kind: str = USER_HOME) -> Home:
        stub = rgrpc.RegionStub(self.homes.channels(peer))
        answer = await stub.OfferHome(rpb.HomeOffer(
            region=self.homes.region, kind=kind, key=key, home=row.region, epoch=row.epoch,
            confirmed=row.confirmed), timeout=HAND_OFF_TIMEOUT_S)
        return home_of(answer)

    async def _resume(self, stub: rgrpc.RegionStub, old: str, user: str) -> None:
        try:
            await stub.HandOff(rpb.HandOffRequest(region=self.homes.region, kind=USER_HOME,
                                                  key=user, resume=True),
                               timeout=HAND_OFF_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("region %s was not told the move of user %s is over: %s", old, user,
                        exc.code().name)

    def stop(self) -> None:
        for task in self._watchdogs.values():
            task.cancel()
        self._watchdogs.clear()

    def families(self) -> Iterator[Metric]:
        yield metrics.counter("chatplane_region_user_homes_moved_here_total",
                              "users whose inbox home an admin call moved to this region",
                              self.moved_here)
        yield metrics.counter("chatplane_region_user_homes_handed_off_total",
                              "users whose inbox this region stopped writing for an admin move"
                              " (taken by another region, or given up)", self.handed_off)

    @staticmethod
    def _row(home: Home | None) -> rpb.HomeRow:
        return rpb.HomeRow() if home is None else home_row(home)

    @staticmethod
    def _answer(user: str, row: Home, *, moved: bool, **extra: Any) -> dict[str, Any]:
        return {"user_id": user, "home": row.region, "epoch": row.epoch, "moved": moved,
                **extra}
