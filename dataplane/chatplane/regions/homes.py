"""Home regions (DESIGN §5, docs/architecture.md "Regions"): the one region that
sequences a conversation, where it is placed, and the forwarding of sends to it.

Placement: the first region that needs a home for a conversation proposes itself (epoch
1, unconfirmed) in its own store, then offers the proposal to every peer's store
(`Region.OfferHome`). Each store keeps one row by the same total rule
(`storage.base.home_replaces`: an unconfirmed tie at one epoch goes to the region whose
name sorts first), so two regions proposing at once end with one winner everywhere. A
region sequences only under a **confirmed** row of its own, which it writes once every
peer holds its proposal; then it tells the peers (best effort: a peer that still holds
the proposal forwards to the proposer, which answers from its confirmed row). A peer that
does not answer blocks *new* homes (UNAVAILABLE, retried by the client): a region keeps
sequencing the conversations it already homes (alone in `async` durability; in `sync`
each ack also waits for a peer to apply it, regions/durability.py).

Forwarding: a send into a conversation homed elsewhere goes to the home as
`Region.Send`, idempotent by (sender, device, cid) like a client's resend, and its ack
comes back to the device from the region it is connected to. The device's own copy,
like every member's, arrives by replication (regions/replication.py).

Groups are homed where they are created (`place_here`: a fresh id no other region
knows, so no offer round), and a client's change to a group homed elsewhere (add,
kick, leave, rename, roles, dissolve, invite, join, decline) is forwarded to the home as
`Region.GroupOp`, an admin API change as `Region.AdminGroupChange`: the home checks it
against the member list it sequences, and every region replays it from the group's log
(regions/groupchanges.py).

User homes: every user's inbox sequence (`inbox_seq`) has a home region too (kind
`user`, placed and moved by the same rule), which alone writes the user's inbox
entries: a region that stores a message (committed here, or applied from a peer's log)
writes entries only for the members it homes (`storage.base.ReplicatedLog.region`), and
the others' entries reach it through their home's log as (user, inbox_seq) entries, so a
user's inbox seqs name the same messages in every region. `users` settles the homes of a
message's recipients before it is stored (placing here those that have none). A user's
event conversation ("u:<user>") is homed with the user: an event emitted elsewhere is
forwarded to the user's home (`event_elsewhere`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.records import from_pb, to_pb
from chatplane.regions.durability import Durability
from chatplane.regions.notices import Notices
from chatplane.storage.base import (
    CONVERSATION_HOME,
    USER_HOME,
    AppendResult,
    Home,
    LogEntry,
    SendRequest,
    Storage,
    StorageUnavailable,
    StoredMessage,
)
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

PLACEMENT_EPOCH = 1  # a failover raises it (regions/failover.py)
FORWARD_TIMEOUT_S = 10.0  # a forwarded send: the home's append, under load, plus the link
OFFER_TIMEOUT_S = 5.0
# a home handed off by an admin move (regions/moving.py) and not taken within this
# stops refusing; it then checks its row with the peers before sequencing again
MOVE_HOLD_S = 30.0
RECHECK_PAUSE_S = 1.0  # a hand-off past MOVE_HOLD_S whose row a peer did not confirm
MAX_REDIRECTS = 3  # "not the home, X is": re-resolve at most this often per send
# another region's unconfirmed proposal for a user's home: looked at again this often
# (it confirms within its offer round) before the store is written
SETTLE_TRIES = 20
SETTLE_PAUSE_S = 0.05
# confirmed rows kept in memory (an LRU over what the `homes` table holds, ~200 bytes
# each): a miss costs one storage read, so only the working set needs to fit
CONFIRMED_CACHE = 65_536

T = TypeVar("T")
Channels = Callable[[str], grpc.aio.Channel]  # peer region name -> its channel
# The home's own sequencing of a forwarded send (`Sequencer.send`, via the node).
LocalSend = Callable[[SendRequest], Awaitable[AppendResult]]
# The home's own handling of a forwarded group change (`Groups.handle_op`): its ack.
LocalGroupOp = Callable[[str, str, pb.GroupOp], Awaitable[pb.GroupOpAck]]
# ... and of a forwarded admin API change (`Groups.admin_change`): the last change's seq.
LocalAdminChange = Callable[[str, list[str], list[str], bool], Awaitable[int]]
# One forwarding call to the home, on its stub.
GroupCall = Callable[[rgrpc.RegionStub], Awaitable[rpb.ForwardedGroupAck]]


@dataclass
class HandOff:
    """A home this region is handing off (an admin move, regions/moving.py)."""

    until: float  # monotonic: no longer refusing sends after this
    head: int = 0  # the log head read once sends stopped (0: not read yet)
    open: bool = True  # refusing sends; closed: given up or timed out, not yet re-checked
    rechecking: bool = False  # the row is being checked with the peers (`held_back`)
    to: str = ""  # the region taking it: only its call resumes it (`resume`)


def homed(conversation_id: str) -> bool:
    """Whether the conversation has a home region: 1:1 chats and groups."""
    return conversation_id.startswith(("d:", "g:"))


def events_user(conversation_id: str) -> str:
    """The user of an event conversation "u:<user>" ("" for any other): it is homed
    with the user's inbox."""
    return conversation_id[2:] if conversation_id.startswith("u:") else ""


def timeline_user(conversation_id: str) -> str:
    """The user a timeline is homed with: its events ("u:<user>") or its relations
    records ("r:<user>", regions/social.py); "" for any other conversation."""
    return conversation_id[2:] if conversation_id.startswith(("u:", "r:")) else ""


def home_row(home: Home) -> rpb.HomeRow:
    """A home as the link carries it."""
    return rpb.HomeRow(home=home.region, epoch=home.epoch, confirmed=home.confirmed)


def home_of(row: rpb.HomeRow) -> Home:
    """A home as the link carried it."""
    return Home(row.home, row.epoch, row.confirmed)


def _unavailable(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE, what)


class Homes:
    """This region's view of home regions, placement and forwarding."""

    def __init__(self, region: str, storage: Storage, peers: list[str], channels: Channels,
                 durability: Durability | None = None) -> None:
        self.region = region
        self.durability = durability  # None: acked on local durability (no log)
        self.storage = storage
        self.peers = peers
        self.channels = channels
        # confirmed rows (they never change here): spares a storage read per send to
        # find the home, and the apply side a home write per replicated batch. A cache
        # of the `homes` table, bounded: the least recently used row goes first.
        self._confirmed: OrderedDict[tuple[str, str], Home] = OrderedDict()
        self.confirmed_cache = CONFIRMED_CACHE
        self._claims: dict[tuple[str, str], asyncio.Future[Home]] = {}
        # peers lost for good (regions/failover.py): their homes were taken over here,
        # and they are not asked before this region sequences its own homes
        self.lost: set[str] = set()
        self.verified = 0  # own rows read from storage and checked with the peers
        self._background: set[asyncio.Task[None]] = set()
        # replaced at every home commit: the log's readers wait on the current one
        self.changed = asyncio.Event()
        self.forwarded = 0
        self.served = 0
        self.ops_forwarded = 0  # group changes forwarded to their group's home
        self.ops_served = 0
        self.placed = 0  # conversations homed here by placement
        self.users_placed = 0  # users' inboxes homed here by placement
        # homes an admin move is taking away (regions/moving.py), by conversation
        self._handing_off: dict[str, HandOff] = {}
        # users' homes an admin move is taking away (regions/user_moves.py), by user:
        # their events and relations records are refused meanwhile
        self._users_handing_off: dict[str, HandOff] = {}
        # a keyspace shared by the regions (regions/notices.py): the database copies
        # the rows, the peers are told what was committed here; None: a replicated log
        self.notices: Notices | None = None

    # -- a shared keyspace (regions/notices.py) --------------------------------

    async def inboxes_here(self, recipients: Sequence[str]) -> list[str] | None:
        """The recipients whose inbox entries this region writes as it stores a
        message: on a shared keyspace those it homes (settled by `users` before); None
        (every one: the store itself keeps to its users, `serve_region`) otherwise."""
        if self.notices is None:
            return None
        return await self.users_here(recipients)

    async def users_here(self, users: Sequence[str]) -> list[str]:
        """The users among `users` homed in this region (their rows as stored)."""
        rows = await asyncio.gather(*(self.stored(USER_HOME, user) for user in users))
        return [user for user, row in zip(users, rows, strict=True)
                if row is not None and row.confirmed and row.region == self.region]

    def stored_here(self, result: AppendResult, recipients: Sequence[str],
                    here: Sequence[str] | None) -> None:
        """A message stored here as its conversation's home: on a shared keyspace the
        peers are told, with the recipients whose entries were not written here. A
        duplicate is told again (the peer finds the entries it wrote): its original's
        notice may never have been made (a forwarded send's handler cancelled by a cut
        link after the append, before the notice; or an append refused after its rows
        landed), and its resend is the only moment left to make it."""
        notices = self.notices
        if notices is None:
            return
        owed = (tuple(user for user in recipients if here is None or user not in here)
                if result.duplicate else result.owed)
        if not owed:
            return
        message = result.message
        row = self.known(CONVERSATION_HOME, message.conversation_id)
        notices.add(message.conversation_id, row.epoch if row is not None else PLACEMENT_EPOCH,
                    message.seq, message.seq, owed)

    def recovered(self, message: StoredMessage, recipients: Sequence[str],
                  here: Sequence[str]) -> None:
        """A message a take finished (storage's recovery: an append refused after its
        rows landed) is told at once, before the conversation's next seqs are: told
        only by its resend, its entries would land after later ones in the peers'
        users' inboxes."""
        self.stored_here(AppendResult(message, duplicate=True), recipients, here)

    async def told(self) -> None:
        """Returns once the notices made so far are kept (a cluster's Redis, im/
        sharednotices.py): a send is acked only after its notice can reach the peers."""
        if self.notices is not None:
            await self.notices.flushed()

    def committed(self) -> None:
        """A message was sequenced here as home: wake the log's readers."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    async def settle(self, conversation_id: str, log_position: int) -> None:
        """A send sequenced here as home (new or a resend's duplicate), its append at
        `log_position` of the log: returns when it may be acked under the durability
        mode (regions/durability.py)."""
        if self.durability is not None and homed(conversation_id):
            await self.durability.settle(conversation_id, log_position)
            if self.moved_past(conversation_id, log_position):
                raise _unavailable(f"the home of {conversation_id!r} is moving: resend")
            # the home moved while the send waited (a peer took it over, and told us
            # before it confirmed the entry): the message is superseded, never acked;
            # the client's resend goes to the new home
            try:
                row = await self.stored(CONVERSATION_HOME, conversation_id)
            except StorageUnavailable as exc:
                raise _unavailable(f"storage unavailable, retry: {exc}") from exc
            if row is not None and row.region != self.region:
                raise _unavailable(f"the home of {conversation_id!r} moved to region"
                                   f" {row.region} (failover): resend")

    def deliver_when_confirmed(self, conversation_id: str, log_position: int,
                               deliver: Callable[[], None]) -> None:
        """Push a message sequenced here as home to this region's devices (`deliver`)
        once it may be acked, never before: in `sync`, once a peer applied it. A
        message pushed before would be seen by devices although the home could die
        with it unreplicated, and the region taking over would give its seq to another
        message (docs/architecture.md, "Failover"). Not pushed at all when the home
        moved meanwhile (it is superseded). The wait is registered before the sender's
        (`settle`), so the push still goes out before the ack."""
        durability = self.durability
        if self.moved_past(conversation_id, log_position):
            return  # sequenced after an admin move began: the new home may reuse its seq
        if (durability is None or not durability.waits or not homed(conversation_id)
                or log_position <= 0):
            deliver()
            return
        waiter = durability.waiter(log_position)
        if waiter.done():  # every peer lost: acked alone, pushed at once
            self._deliver_if_home(conversation_id, self.known(CONVERSATION_HOME,
                                                              conversation_id), deliver)
            return
        self._spawn(self._deliver_confirmed(waiter, conversation_id, log_position, deliver))

    async def _deliver_confirmed(self, waiter: asyncio.Future[None], conversation_id: str,
                                 log_position: int, deliver: Callable[[], None]) -> None:
        await waiter
        if self.moved_past(conversation_id, log_position):
            return
        row = self.known(CONVERSATION_HOME, conversation_id)  # cached: no storage read
        if row is None:  # evicted, or dropped by a takeover (forget_cached): read back,
            try:  # never assumed ours, or a superseded message would be pushed
                row = await self.stored(CONVERSATION_HOME, conversation_id)
            except StorageUnavailable:
                log.warning("%s: home not readable: a message sequenced here is not pushed"
                            " (devices sync it)", conversation_id)
                return
        self._deliver_if_home(conversation_id, row, deliver)

    def _deliver_if_home(self, conversation_id: str, row: Home | None,
                         deliver: Callable[[], None]) -> None:
        if row is None or row.region == self.region:
            deliver()
        else:
            log.info("%s moved to %s: a message sequenced here before is not pushed",
                     conversation_id, row.region)

    # -- where a conversation is sequenced ------------------------------------

    async def of(self, kind: str, key: str) -> Home:
        """The home as this region knows it, placed here when it has none. A row of
        another region may be its unconfirmed proposal: it settles that itself."""
        cached = self.known(kind, key)
        held = self._handing_off.get(key) if kind == CONVERSATION_HOME else None
        rechecked = held is not None and not held.open  # a move that was not finished
        if cached is not None and not rechecked:
            return cached
        row = await self.storage.home(kind, key)
        if row is not None and row.confirmed and row.region == self.region:
            verified = await self._verify(kind, key, row)
            if rechecked:  # home here again, or the row that moved it is held here now
                self._handing_off.pop(key, None)
            return self._remember(kind, key, verified)
        if rechecked:  # the new home's row is held here: sends go there
            self._handing_off.pop(key, None)
        if row is not None and (row.confirmed or row.region != self.region):
            return self._remember(kind, key, row)
        claim = self._claims.get((kind, key))
        if claim is None:  # one claim at a time per key in this process
            claim = asyncio.ensure_future(self._claim(kind, key))
            self._claims[(kind, key)] = claim
            claim.add_done_callback(lambda _: self._claims.pop((kind, key), None))
        return await asyncio.shield(claim)

    async def _verify(self, kind: str, key: str, row: Home) -> Home:
        """Our own confirmed row, as storage holds it, before this process sequences
        under it: a peer may have taken the home over while this region was away
        (failover), so every peer not lost is offered it and answers its row; a
        higher one is learnt (the home moved). The cache then spares the check."""
        live = [peer for peer in self.peers if peer not in self.lost]
        answers = await asyncio.gather(*(self._offer(peer, kind, key, row) for peer in live),
                                       return_exceptions=True)
        for peer, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                raise _unavailable(f"cannot check the home of {key!r} with region {peer}"
                                   f" ({answer})") from None
        self.verified += 1
        for answer in answers:
            assert isinstance(answer, Home)
            if answer != row:
                learnt = await self.learn(kind, key, answer)
                if learnt != row:
                    log.info("home of %s %s moved to %s (epoch %d) while this region was away",
                             kind, key, learnt.region, learnt.epoch)
                    return learnt
        return row

    async def users(self, users: Iterable[str]) -> None:
        """The homes of `users` settled (confirmed rows in this store; placed here when
        they have none) before a message for them is stored: the store writes the
        entries of those homed here only. UNAVAILABLE when a home cannot be settled (a
        peer does not answer a new placement): the append is not made, and retried."""
        unknown = [user for user in dict.fromkeys(users) if self.known(USER_HOME, user) is None]
        if not unknown:
            return
        try:
            await asyncio.gather(*(self.user_home(user) for user in unknown))
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc

    def login(self, user_id: str) -> None:
        """A device of the user logged in here: its home is placed here if it has none
        (in the background, best effort: a login never waits for a peer; the first inbox
        entry for the user settles it otherwise)."""
        if self.known(USER_HOME, user_id) is None:
            self._spawn(self._settle_quietly(user_id))

    async def _settle_quietly(self, user_id: str) -> None:
        try:
            await self.users((user_id,))
        except (ProtocolError, StorageUnavailable) as exc:
            log.info("home of user %s not settled at login: %s", user_id, exc)

    async def event_elsewhere(self, request: SendRequest) -> AppendResult | None:
        """An event for a user ("u:<user>", friends, reads, invitations): None when this
        region homes the user (its event conversation is then homed here too, at the
        user's epoch, so the event and its inbox entry replicate like a message), else
        the ack of the user's home it was forwarded to (`Region.Send`)."""
        user_id = events_user(request.conversation_id)
        try:
            for _ in range(MAX_REDIRECTS):
                home = await self.user_home(user_id)
                if home.region == self.region:
                    if self.moving(request.conversation_id):
                        raise _unavailable(f"the home of user {user_id!r} is moving: retry")
                    row = Home(self.region, home.epoch, True)
                    if self.known(CONVERSATION_HOME, request.conversation_id) != row:
                        await self.learn(CONVERSATION_HOME, request.conversation_id, row)
                    return None
                result = await self._forward(home.region, request, USER_HOME, user_id)
                if result is not None:
                    return result
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc
        raise _unavailable(f"home of user {user_id!r} keeps moving")

    async def user_home(self, user_id: str) -> Home:
        """The user's confirmed home (placed here when it has none): the region whose
        log carries the user's inbox entries."""
        for _ in range(SETTLE_TRIES):
            row = await self.of(USER_HOME, user_id)
            if row.confirmed:
                return row
            await asyncio.sleep(SETTLE_PAUSE_S)  # another region's proposal in flight
        raise _unavailable(f"home of user {user_id!r} not settled yet")

    def forget_cached(self) -> None:
        """Drop the cached rows (a takeover changed them in storage)."""
        self._confirmed.clear()

    def _remember(self, kind: str, key: str, row: Home) -> Home:
        if row.confirmed:
            cache = self._confirmed
            cache[(kind, key)] = row
            cache.move_to_end((kind, key))
            while len(cache) > self.confirmed_cache:
                cache.popitem(last=False)
        return row

    def known(self, kind: str, key: str) -> Home | None:
        """The confirmed row this process holds in memory (no storage read; None
        also when it was evicted: `stored` reads it back)."""
        row = self._confirmed.get((kind, key))
        if row is not None:
            self._confirmed.move_to_end((kind, key))
        return row

    async def stored(self, kind: str, key: str) -> Home | None:
        """The row as this store holds it: from memory, else read (and cached when
        confirmed). Never places a home."""
        row = self.known(kind, key)
        if row is None:
            row = await self.storage.home(kind, key)
            if row is not None:
                self._remember(kind, key, row)
        return row

    async def learn(self, kind: str, key: str, row: Home) -> Home:
        """A row another region holds (a refusal, a replicated entry): kept here when
        it replaces ours by the same rule every store follows."""
        return self._remember(kind, key, await self.storage.offer_home(kind, key, row))

    async def place_here(self, conversation_id: str) -> None:
        """A conversation made here under a fresh id (a new group): homed here at once,
        confirmed. No other region knows the id, so none can hold a row for it; peers
        learn the row from its first log entry (and are told, best effort)."""
        try:
            row = await self.learn(CONVERSATION_HOME, conversation_id,
                                   Home(self.region, PLACEMENT_EPOCH, True))
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc
        if row.region != self.region:  # cannot happen for a fresh id: never sequence it
            raise _unavailable(f"{conversation_id!r} is already homed in {row.region}")
        self.placed += 1
        for peer in self.peers:
            self._spawn(self._tell(peer, CONVERSATION_HOME, conversation_id, row))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _claim(self, kind: str, key: str) -> Home:
        mine = Home(self.region, PLACEMENT_EPOCH)
        row = await self.storage.offer_home(kind, key, mine)
        if row.region != self.region or row.confirmed:
            return self._remember(kind, key, row)
        live = [peer for peer in self.peers if peer not in self.lost]
        answers = await asyncio.gather(*(self._offer(peer, kind, key, mine)
                                         for peer in live), return_exceptions=True)
        for peer, answer in zip(live, answers, strict=True):
            if isinstance(answer, BaseException):
                raise _unavailable(f"cannot place the home of {key!r}: region {peer} does not"
                                   f" answer ({answer})") from None
        for answer in answers:
            assert isinstance(answer, Home)
            if (answer.region, answer.epoch) != (mine.region, mine.epoch):
                return await self.learn(kind, key, answer)  # it beats ours everywhere
        confirmed = Home(self.region, PLACEMENT_EPOCH, True)
        row = self._remember(kind, key, await self.storage.offer_home(kind, key, confirmed))
        if row == confirmed:
            if kind == CONVERSATION_HOME:
                self.placed += 1
            else:
                self.users_placed += 1
            log.info("home of %s %s placed here (epoch %d)", kind, key, confirmed.epoch)
            for peer in self.peers:  # best effort: forwarding settles a peer that missed it
                self._spawn(self._tell(peer, kind, key, confirmed))
        return row

    async def _offer(self, peer: str, kind: str, key: str, offered: Home) -> Home:
        stub = rgrpc.RegionStub(self.channels(peer))
        reply = await stub.OfferHome(rpb.HomeOffer(
            region=self.region, kind=kind, key=key, home=offered.region, epoch=offered.epoch,
            confirmed=offered.confirmed), timeout=OFFER_TIMEOUT_S)
        return home_of(reply)

    async def correct(self, peer: str, kind: str, key: str, row: Home) -> None:
        """Tell `peer`, which serves entries of `key` under an epoch it lost, the row
        held here (raises when it cannot be told: the caller does not confirm them)."""
        answer = await self._offer(peer, kind, key, row)
        if answer != row:
            log.warning("peer %s keeps %s for %s %s over %s", peer, answer, kind, key, row)

    async def _tell(self, peer: str, kind: str, key: str, confirmed: Home) -> None:
        try:
            await self._offer(peer, kind, key, confirmed)
        except grpc.aio.AioRpcError as exc:
            log.info("peer %s did not hear that %s is homed here: %s", peer, key, exc.code().name)

    async def offered(self, request: rpb.HomeOffer) -> rpb.HomeRow:
        """`Region.OfferHome` on this side: this store's row after the offer."""
        row = await self.learn(request.kind, request.key,
                               Home(request.home, request.epoch, request.confirmed))
        if request.kind == CONVERSATION_HOME and request.key in self._handing_off:
            # a move of it from here is over: its log serves none of the chat's entries
            # under the new row (nothing held back for it from now on), so another move
            # from here does not wait on this one's offers to the other peers
            self.committed()
        return home_row(row)

    # -- sends ----------------------------------------------------------------

    async def sequence_elsewhere(self, request: SendRequest) -> AppendResult | None:
        """A client's send: None when this region is the conversation's home (the
        caller sequences it), else the ack of the home it was forwarded to."""
        if not homed(request.conversation_id):
            return None
        try:
            return await self._sequence_elsewhere(request)
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc

    async def _sequence_elsewhere(self, request: SendRequest) -> AppendResult | None:
        return await self._at_home(request.conversation_id, lambda region: self._forward(
            region, request, CONVERSATION_HOME, request.conversation_id))

    async def _at_home(self, conversation_id: str,
                       forward: Callable[[str], Awaitable[T | None]]) -> T | None:
        """None when this region is the home, else what `forward(home)` answered; a
        forward answers None when the callee named another home (learnt: tried next)."""
        for _ in range(MAX_REDIRECTS):
            home = await self.of(CONVERSATION_HOME, conversation_id)
            if home.region == self.region:
                if self.moving(conversation_id):
                    raise _unavailable(f"the home of {conversation_id!r} is moving: retry")
                if home.confirmed:
                    return None
                raise _unavailable(f"home of {conversation_id!r} not settled yet")
            result = await forward(home.region)
            if result is not None:
                return result
        raise _unavailable(f"home of {conversation_id!r} keeps moving")

    async def _forward(self, region: str, request: SendRequest, kind: str,
                       key: str) -> AppendResult | None:
        """The home's ack, or None when it says another region is the home of `key`
        (learnt)."""
        stub = rgrpc.RegionStub(self.channels(region))
        try:
            reply = await stub.Send(rpb.ForwardedSend(
                region=self.region, user_id=request.sender, device_id=request.sender_device,
                conversation_id=request.conversation_id, cid=request.cid, text=request.text,
                payload=request.payload, content_type=request.content_type),
                timeout=FORWARD_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(f"home region {region} of {request.conversation_id!r}"
                               f" unreachable: {exc.code().name}") from exc
        if reply.HasField("not_home"):
            await self.learn(kind, key, home_of(reply.not_home))
            return None
        if reply.error_code:
            raise ProtocolError(ErrorCode(reply.error_code), reply.error)
        self.forwarded += 1
        return AppendResult(message=from_pb(reply.message), duplicate=reply.duplicate)

    async def serve_send(self, request: rpb.ForwardedSend, send: LocalSend) -> rpb.ForwardedAck:
        """`Region.Send` on this side: sequenced here when this region is the home (of
        the conversation; of the user, for an event of the user's)."""
        event_of = events_user(request.conversation_id)
        if not homed(request.conversation_id) and event_of != request.user_id:
            return rpb.ForwardedAck(error_code=ErrorCode.INVALID_ARGUMENT,
                                    error=f"{request.conversation_id!r} has no home region")
        try:
            home = await (self.user_home(event_of) if event_of else
                          self.of(CONVERSATION_HOME, request.conversation_id))
            if home.region != self.region:
                return rpb.ForwardedAck(not_home=home_row(home))
            if self.moving(request.conversation_id):
                raise _unavailable(f"the home of {request.conversation_id!r} is moving: retry")
            if not home.confirmed:
                raise _unavailable(f"home of {request.conversation_id!r} not settled yet")
            result = await send(SendRequest(
                conversation_id=request.conversation_id, sender=request.user_id,
                sender_device=request.device_id, cid=request.cid, text=request.text,
                message_id="", sent_at_ms=0, payload=request.payload,
                content_type=request.content_type))
        except ProtocolError as exc:
            return rpb.ForwardedAck(error_code=exc.code, error=exc.message)
        except StorageUnavailable as exc:
            return rpb.ForwardedAck(error_code=ErrorCode.UNAVAILABLE,
                                    error=f"storage unavailable, retry: {exc}")
        self.served += 1
        return rpb.ForwardedAck(message=to_pb(result.message), duplicate=result.duplicate)

    # -- group changes --------------------------------------------------------

    async def group_op_elsewhere(self, user_id: str, device_id: str,
                                 op: pb.GroupOp) -> pb.GroupOpAck | None:
        """A client's change to a group: None when this region is its home (the caller
        applies it), else the ack of the home it was forwarded to. The change itself,
        like every member's view of it, arrives here by replication."""
        request = rpb.ForwardedGroupOp(region=self.region, user_id=user_id,
                                       device_id=device_id, op=op)
        return await self._group_elsewhere(op.conversation_id, lambda stub: stub.GroupOp(
            request, timeout=FORWARD_TIMEOUT_S))

    async def admin_change_elsewhere(self, conversation_id: str, add: list[str],
                                     remove: list[str], dissolve: bool) -> int | None:
        """The admin API's change to a group: None when this region is its home, else
        the seq of the last change the home recorded (0: none)."""
        request = rpb.ForwardedAdminChange(region=self.region, conversation_id=conversation_id,
                                           add=add, remove=remove, dissolve=dissolve)
        ack = await self._group_elsewhere(conversation_id, lambda stub: stub.AdminGroupChange(
            request, timeout=FORWARD_TIMEOUT_S))
        return None if ack is None else ack.seq

    async def _group_elsewhere(self, conversation_id: str, call: GroupCall,
                               ) -> pb.GroupOpAck | None:
        if not homed(conversation_id):
            return None
        try:
            return await self._at_home(conversation_id, lambda region: self._forward_group(
                region, conversation_id, call))
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc

    async def _forward_group(self, region: str, conversation_id: str,
                             call: GroupCall) -> pb.GroupOpAck | None:
        try:
            reply = await call(rgrpc.RegionStub(self.channels(region)))
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(f"home region {region} of {conversation_id!r}"
                               f" unreachable: {exc.code().name}") from exc
        if reply.HasField("not_home"):
            await self.learn(CONVERSATION_HOME, conversation_id, home_of(reply.not_home))
            return None
        if reply.error_code:
            raise ProtocolError(ErrorCode(reply.error_code), reply.error)
        self.ops_forwarded += 1
        return reply.ack

    async def serve_group(self, conversation_id: str,
                          apply: Callable[[], Awaitable[pb.GroupOpAck]]) -> rpb.ForwardedGroupAck:
        """`Region.GroupOp` or `Region.AdminGroupChange` on this side: `apply()`d here
        when this region is the group's home."""
        if not homed(conversation_id):
            return rpb.ForwardedGroupAck(error_code=ErrorCode.INVALID_ARGUMENT,
                                         error=f"{conversation_id!r} has no home region")
        try:
            home = await self.of(CONVERSATION_HOME, conversation_id)
            if home.region != self.region:
                return rpb.ForwardedGroupAck(not_home=home_row(home))
            if self.moving(conversation_id):
                raise _unavailable(f"the home of {conversation_id!r} is moving: retry")
            if not home.confirmed:
                raise _unavailable(f"home of {conversation_id!r} not settled yet")
            ack = await apply()
        except ProtocolError as exc:
            return rpb.ForwardedGroupAck(error_code=exc.code, error=exc.message)
        except StorageUnavailable as exc:
            return rpb.ForwardedGroupAck(error_code=ErrorCode.UNAVAILABLE,
                                         error=f"storage unavailable, retry: {exc}")
        self.ops_served += 1
        return rpb.ForwardedGroupAck(ack=ack)

    # -- admin moves (regions/moving.py) ---------------------------------------

    def hand_off(self, conversation_id: str, to: str = "") -> None:
        """Stop sequencing `conversation_id` here: an admin move takes it elsewhere. New
        sends are refused (UNAVAILABLE, retried by the client) until `resume` or
        MOVE_HOLD_S, and what is sequenced after `handed_off_at` is neither acked nor
        pushed here (the new home does not apply it) until the row is checked again."""
        self._handing_off[conversation_id] = HandOff(time.monotonic() + MOVE_HOLD_S, to=to)

    def handing_off_to(self, conversation_id: str) -> str | None:
        """The region an open hand-off of `conversation_id` goes to (None: none open,
        or past MOVE_HOLD_S)."""
        held = self._handing_off.get(conversation_id)
        if held is None or not held.open or time.monotonic() >= held.until:
            return None
        return held.to

    def handed_off_at(self, conversation_id: str, log_head: int) -> None:
        """The log head read after `hand_off`: everything at or below it was sequenced
        before, and the new home applies it before it takes the home."""
        held = self._handing_off.get(conversation_id)
        if held is not None:
            held.head = log_head
            self.committed()  # the log's readers: what is at or below the head may go

    def resume(self, conversation_id: str, by: str | None = None) -> None:
        """The move is over (the new home holds the row, or it gave up): sequence under
        whatever row this store holds. `by`: the region whose move is over; a hand-off
        to another region is not its to end (a move refused as another was under way)."""
        held = self._handing_off.get(conversation_id)
        if by is not None and held is not None and held.to and held.to != by:
            return
        self._handing_off.pop(conversation_id, None)
        self._confirmed.pop((CONVERSATION_HOME, conversation_id), None)
        self.committed()  # the log's readers: what `held_back` held may go (or is gone)

    def moving(self, conversation_id: str) -> bool:
        """Sends of `conversation_id` are refused here while this region holds its
        home (a move is under way). A move not finished in MOVE_HOLD_S closes: the next
        send checks the row with the peers first (`of`: the new home may have taken it
        without this region hearing). A user's timelines (events, relations records)
        are refused while the user's home is moving (`hold_user`)."""
        user = timeline_user(conversation_id)
        if user and user in self._users_handing_off:
            return True
        held = self._handing_off.get(conversation_id)
        if held is None or not held.open:
            return False
        if time.monotonic() >= held.until:
            log.warning("the move of %s's home was not finished in %.0fs: its row is checked"
                        " with the peers before it is sequenced here again", conversation_id,
                        MOVE_HOLD_S)
            held.open = False
            self._confirmed.pop((CONVERSATION_HOME, conversation_id), None)
            return True  # this send too: its retry reads the row and checks it first
        return True

    def moved_past(self, conversation_id: str, log_position: int) -> bool:
        """Sequenced here after an admin move began (or before its head was read): of
        the conversation, or of the user whose timeline it is."""
        user = timeline_user(conversation_id)
        held = (self._users_handing_off.get(user) if user
                else self._handing_off.get(conversation_id))
        return held is not None and (held.head == 0 or log_position > held.head)

    async def timeline_settled(self, conversation_id: str, log_position: int) -> None:
        """An event appended here as its user's home, at `log_position`: UNAVAILABLE
        (never acked: the new home does not apply it) when the user's home was being
        moved away as it was sequenced, or has moved."""
        user = timeline_user(conversation_id)
        if not user:
            return
        if self.moved_past(conversation_id, log_position):
            raise _unavailable(f"the home of user {user!r} is moving: resend")
        try:
            row = await self.stored(USER_HOME, user)
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc
        if row is not None and row.region != self.region:
            raise _unavailable(f"the home of user {user!r} moved to region {row.region}:"
                               " resend")

    # -- admin moves of users' homes (regions/user_moves.py) --------------------

    def hold_user(self, user_id: str, to: str = "") -> None:
        """An admin move takes the user's home elsewhere (to region `to`): its
        timelines' appends are refused (`moving`), and what they sequence after
        `user_held_at` is never acked nor served to a peer (`held_back`)."""
        self._users_handing_off[user_id] = HandOff(time.monotonic() + MOVE_HOLD_S, to=to)

    def user_handing_off_to(self, user_id: str) -> str | None:
        """The region an open hand-off of the user's home goes to (None: none)."""
        held = self._users_handing_off.get(user_id)
        return None if held is None else held.to

    def user_held_at(self, user_id: str, log_head: int) -> None:
        held = self._users_handing_off.get(user_id)
        if held is not None:
            held.head = log_head
            self.committed()  # the log's readers: the timelines at or below it may go

    def release_user(self, user_id: str) -> None:
        """The user's move is over: its rows are read again from storage."""
        self._users_handing_off.pop(user_id, None)
        self.forget_user(user_id)
        self.committed()  # the log's readers: what `held_back` held may go (or is gone)

    def forget_user(self, user_id: str) -> None:
        """Drop the cached rows of the user and its timelines (a move changed them)."""
        for kind, key in ((USER_HOME, user_id), (CONVERSATION_HOME, f"u:{user_id}"),
                          (CONVERSATION_HOME, f"r:{user_id}")):
            self._confirmed.pop((kind, key), None)

    def held_back(self, entries: Sequence[LogEntry]) -> int | None:
        """The log position of the first of `entries` (this region's log, read for a
        peer) that was sequenced here past an admin move's hand-off head while the move
        is not over: the log is served to no peer from there until it is. The new home
        takes the chat without it (it applied the log to the head only), so a third
        region that applied and pushed it would hold another message at a seq the new
        home gives out (issue 17). Once the new home's row is held here the log serves
        none of the chat's entries; a move given up serves them as they are. A hand-off
        past MOVE_HOLD_S is checked with the peers first (`of`), as a send would. The
        same for a user's timelines (`u:`, `r:`) past a user move's head (user_moves)."""
        if not self._handing_off and not self._users_handing_off:
            return None
        for entry in entries:
            conversation_id = entry.message.conversation_id
            if entry.inbox_user:  # a held user's inbox gets no entry here past the head
                continue
            if timeline_user(conversation_id):
                # a user's events past its move's head: held until the move is over
                # (`release_user`, by the new home's call or the hold's watchdog)
                if self.moved_past(conversation_id, entry.lsn):
                    return entry.lsn
                continue
            if self.moved_past(conversation_id, entry.lsn):
                held = self._handing_off[conversation_id]
                self.moving(conversation_id)  # closes a hand-off past MOVE_HOLD_S
                if not held.open and not held.rechecking:
                    held.rechecking = True
                    self._spawn(self._recheck(conversation_id, held))
                return entry.lsn
        return None

    async def _recheck(self, conversation_id: str, held: HandOff) -> None:
        try:
            await self.of(CONVERSATION_HOME, conversation_id)  # drops the hand-off
        except (ProtocolError, StorageUnavailable) as exc:
            log.info("the home of %s is not checked with the peers yet: %s", conversation_id,
                     exc)
            await asyncio.sleep(RECHECK_PAUSE_S)  # asked again at the next read past it
            return
        finally:
            held.rechecking = False
        self.committed()  # the log's readers: served, or not the home's any more

    def families(self) -> Iterator[Metric]:
        """What this region forwarded, served and placed (counters)."""
        yield metrics.counter("chatplane_region_sends_forwarded_total",
                              "sends forwarded to their conversation's home region",
                              self.forwarded)
        yield metrics.counter("chatplane_region_sends_served_total",
                              "sends forwarded here by other regions and sequenced here",
                              self.served)
        yield metrics.counter("chatplane_region_group_changes_forwarded_total",
                              "client group changes forwarded to their group's home region",
                              self.ops_forwarded)
        yield metrics.counter("chatplane_region_group_changes_served_total",
                              "group changes forwarded here by other regions and applied here",
                              self.ops_served)
        yield metrics.counter("chatplane_region_homes_verified_total",
                              "own homes read from storage and checked with the peers before"
                              " sequencing under them (a peer may have taken them over)",
                              self.verified)
        yield metrics.counter("chatplane_region_homes_placed_total",
                              "conversations (1:1 chats, groups) whose home was placed here",
                              self.placed)
        yield metrics.counter("chatplane_region_user_homes_placed_total",
                              "users whose inbox home was placed here", self.users_placed)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
