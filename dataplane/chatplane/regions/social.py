"""Friends, blocks and read positions across regions (docs/architecture.md, "Friends and
reads across regions"): the same in every region, so the rules that read them (a 1:1
send's block check, a group ADD's consent rule) decide alike everywhere.

Friendships: every change of a pair {a, b} is **decided by one region**, the home of
the pair's first user (the ids sorted: `decider`), against the rows that region holds.
A change made elsewhere is forwarded there (`Region.FriendOp`), like a group change to
its group's home, so a request and an accept racing from two regions are serialized by
one store. The decider writes both rows of the pair and a record of them (the rows as
written, `system/relations`) in one transaction, into a timeline of its own that no
client reads (`r:<first user>`, homed with that user): the record rides the decider's
replicated log, and every region applies the records of a pair in the order the
decider made them (the log's order), so every store ends with the decider's rows. In
`sync` durability the change is acked once a peer applied its record.

Read positions: a read is already an event of the reader's own ("u:<reader>", homed
with the reader and replicated from the reader's home); every region that stores such
an event (applied from a log, or appended as the reader's home for another region)
raises the reader's position to it. Positions only move forward, so the merge is a max:
idempotent and indifferent to order.

Both effects are applied **before** the batch that carries them is stored (a separate
transaction): if the batch is not stored (a crash, a refused batch), it is applied
again from the same cursor and its effects are rewritten identically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Protocol, runtime_checkable

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.delivery.dedup import CidAllocator
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.regions.homes import (
    FORWARD_TIMEOUT_S,
    MAX_REDIRECTS,
    Homes,
    events_user,
    home_of,
    home_row,
)
from chatplane.storage.base import (
    CONVERSATION_HOME,
    USER_HOME,
    AppendResult,
    Home,
    Relation,
    SendRequest,
    StorageUnavailable,
    StoredMessage,
)
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

RELATIONS_PREFIX = "r:"  # a decider's timeline of relation records: "r:<first user>"
RELATIONS_RECORD = "system/relations"  # its messages' content type
READ_EVENT = "event/read"  # a user's read event (im/social.py `Social.mark_read`)

Rows = Sequence[tuple[str, str, Relation]]  # (user, other, the user's row about other)
# The decider's own handling of a friend change (`Social.decide_friend_op`).
LocalFriendOp = Callable[[str, pb.FriendOp], Awaitable[Relation]]
# How far this region applied a peer's log (regions/replication.py `PeerReplication`;
# None: not a peer whose log is followed here).
AppliedTo = Callable[[str], int | None]
# a change decided elsewhere is answered once this region applied it (the device reads
# it back here), or after this long (the link cut meanwhile: it arrives later)
READ_BACK_S = 5.0
READ_BACK_POLL_S = 0.02
# Around a write of a pair's rows: the im's relation caches dropped (im/social.py).
Changing = Callable[[str, str], AbstractAsyncContextManager[None]]


@runtime_checkable
class SocialStore(Protocol):
    """What the embedded store does for this (storage/sqlite.py)."""

    async def record_relations(self, request: SendRequest, changes: Rows) -> AppendResult:
        """Append `request` (a record, no inbox entry) to its relations timeline, made
        when missing, and write `changes` in the same transaction (not on a duplicate)."""

    async def ensure_relations_log(self, conversation_id: str, now_ms: int) -> None:
        """The relations timeline exists here (a peer's records are applied into it)."""

    async def put_relations(self, changes: Rows) -> None: ...

    async def merge_reads(self, reads: Sequence[tuple[str, str, int]]) -> None:
        """Each (user, conversation, read_seq) kept when higher than the stored one."""

    async def log_head(self) -> int: ...


def decider(user: str, other: str) -> str:
    """The user whose home decides every change of the pair."""
    return min(user, other)


def relations_log(user: str) -> str:
    return f"{RELATIONS_PREFIX}{user}"


def is_relations_log(conversation_id: str) -> bool:
    return conversation_id.startswith(RELATIONS_PREFIX)


def encode_rows(rows: Rows) -> bytes:
    return json.dumps([[user, other, r.friend, r.request_sent, r.request_received, r.note,
                        r.blocked, r.updated_at_ms] for user, other, r in rows]).encode()


def decode_rows(payload: bytes) -> list[tuple[str, str, Relation]]:
    return [(str(user), str(other), Relation(bool(friend), bool(sent), bool(received),
                                             str(note), bool(blocked), int(at)))
            for user, other, friend, sent, received, note, blocked, at in json.loads(payload)]


def read_of(message: StoredMessage) -> tuple[str, str, int] | None:
    """(reader, conversation, read_seq) of a user's read event, else None."""
    reader = events_user(message.conversation_id)
    if not reader or message.content_type != READ_EVENT:
        return None
    read = pb.Event.FromString(message.payload).read
    return (reader, read.conversation_id, read.read_seq) if read.read_seq > 0 else None


def _relation(row: pb.Relation) -> Relation:
    return Relation(row.friend, row.request_sent, row.request_received, row.note, row.blocked,
                    row.updated_at_ms)


def _relation_pb(other: str, r: Relation) -> pb.Relation:
    return pb.Relation(user_id=other, friend=r.friend, request_sent=r.request_sent,
                       request_received=r.request_received, note=r.note, blocked=r.blocked,
                       updated_at_ms=r.updated_at_ms)


def _unavailable(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE, what)


class SocialHomes:
    """Where a friend change is decided, its record, and the effects of peers' records
    and read events on this region's store."""

    def __init__(self, homes: Homes, store: SocialStore, changing: Changing,
                 clock_ms: Callable[[], int], device: str, applied_to: AppliedTo) -> None:
        self.homes = homes
        self.applied_to = applied_to
        self.store = store
        self.changing = changing
        self.clock_ms = clock_ms
        self.device = device  # the records' sender device: unique to this process
        self._cids = CidAllocator()
        self.forwarded = 0  # friend changes forwarded to their pair's deciding home
        self.served = 0  # ... decided here for another region
        self.records_applied = 0  # peers' relation records applied here
        self.reads_merged = 0  # read events applied here

    # -- where a pair's change is decided -------------------------------------

    async def friend_op_elsewhere(self, user: str, device: str,
                                  op: pb.FriendOp) -> Relation | None:
        """None when this region decides the pair's changes (the caller does), else the
        acting user's row as the deciding home answered it."""
        first = decider(user, op.user_id)
        request = rpb.ForwardedFriendOp(region=self.homes.region, user_id=user,
                                        device_id=device, op=op)
        try:
            for _ in range(MAX_REDIRECTS):
                home = await self.homes.user_home(first)
                if home.region == self.homes.region:
                    return None
                answer = await self._forward(home.region, first, request)
                if answer is not None:
                    return answer
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc
        raise _unavailable(f"home of user {first!r} keeps moving")

    async def _forward(self, region: str, first: str,
                       request: rpb.ForwardedFriendOp) -> Relation | None:
        stub = rgrpc.RegionStub(self.homes.channels(region))
        try:
            reply = await stub.FriendOp(request, timeout=FORWARD_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(f"home region {region} of user {first!r} unreachable:"
                               f" {exc.code().name}") from exc
        if reply.HasField("not_home"):
            row = reply.not_home
            await self.homes.learn(USER_HOME, first, home_of(row))
            return None
        if reply.error_code:
            raise ProtocolError(ErrorCode(reply.error_code), reply.error)
        self.forwarded += 1
        await self._read_back(region, reply.log_position)
        return _relation(reply.relation)

    async def _read_back(self, region: str, position: int) -> None:
        """Wait (bounded) until this region applied `region`'s log to `position`, so the
        device that made the change reads it back here (in `sync` with two regions the
        decider's ack already implies it; in `async`, or from a third region, it may not)."""
        deadline = time.monotonic() + READ_BACK_S
        while (applied := self.applied_to(region)) is not None and applied < position:
            if time.monotonic() >= deadline:
                log.info("a friend change decided in %s is not applied here yet (at %d of %d)",
                         region, applied, position)
                return
            await asyncio.sleep(READ_BACK_POLL_S)

    async def serve_friend_op(self, request: rpb.ForwardedFriendOp,
                              decide: LocalFriendOp) -> rpb.ForwardedFriendAck:
        """`Region.FriendOp` on this side: decided here when this region homes the pair's
        first user."""
        first = decider(request.user_id, request.op.user_id)
        try:
            home = await self.homes.user_home(first)
            if home.region != self.homes.region:
                return rpb.ForwardedFriendAck(not_home=home_row(home))
            relation = await decide(request.user_id, request.op)
            position = await self.store.log_head()  # at or past the change's record
        except ProtocolError as exc:
            return rpb.ForwardedFriendAck(error_code=exc.code, error=exc.message)
        except StorageUnavailable as exc:
            return rpb.ForwardedFriendAck(error_code=ErrorCode.UNAVAILABLE,
                                          error=f"storage unavailable, retry: {exc}")
        self.served += 1
        return rpb.ForwardedFriendAck(relation=_relation_pb(request.op.user_id, relation),
                                      log_position=position)

    async def record(self, user: str, other: str, rows: Rows) -> int:
        """The decider's write: the pair's rows and their record, one transaction, in
        the first user's relations timeline (homed with that user, at its epoch, so
        the record is in this region's log). Returns the record's log position."""
        first = decider(user, other)
        conversation_id = relations_log(first)
        try:
            home = await self.homes.user_home(first)
            if home.region != self.homes.region:
                raise _unavailable(f"the home of user {first!r} moved to {home.region}: retry")
            if self.homes.moving(conversation_id):  # an admin move of the user's home
                raise _unavailable(f"the home of user {first!r} is moving: retry")
            row = Home(self.homes.region, home.epoch, True)
            if self.homes.known(CONVERSATION_HOME, conversation_id) != row:
                await self.homes.learn(CONVERSATION_HOME, conversation_id, row)
            result = await self.store.record_relations(SendRequest(
                conversation_id=conversation_id, sender=first, sender_device=self.device,
                cid=self._cids.next(), text="", message_id="", sent_at_ms=self.clock_ms(),
                payload=encode_rows(rows), content_type=RELATIONS_RECORD), rows)
        except StorageUnavailable as exc:
            raise _unavailable(f"storage unavailable, retry: {exc}") from exc
        self.homes.committed()  # in the log: wake its readers
        return result.log_position

    async def settle(self, user: str, other: str, position: int) -> None:
        """Once the record at `position` may be acked: in `sync`, a peer applied it
        (regions/durability.py); UNAVAILABLE after the sync timeout (the change is made
        here and replicates when a peer reads the log; the client's resend finds it)."""
        conversation_id = relations_log(decider(user, other))
        if self.homes.durability is not None:
            await self.homes.durability.settle(conversation_id, position)
        # recorded as the first user's home was moving away: the new home skips it
        await self.homes.timeline_settled(conversation_id, position)

    def families(self) -> Iterator[Metric]:
        for name, help_text, value in (
            ("chatplane_region_friend_changes_forwarded_total",
             "friend changes forwarded to the home region that decides their pair",
             self.forwarded),
            ("chatplane_region_friend_changes_served_total",
             "friend changes forwarded here by other regions and decided here", self.served),
            ("chatplane_region_relation_records_applied_total",
             "other regions' friend decisions applied to this store", self.records_applied),
            ("chatplane_region_reads_merged_total",
             "read events applied to this store's read positions (from peers' logs, or"
             " appended here as their reader's home)", self.reads_merged),
        ):
            yield metrics.counter(name, help_text, value)

    # -- what other regions recorded --------------------------------------------

    async def apply(self, messages: Sequence[StoredMessage]) -> None:
        """The friend records and read events among `messages` (a peer's batch, before
        it is stored; or an event appended here as its reader's home), applied to this
        store: records in their order, reads by max."""
        reads: list[tuple[str, str, int]] = []
        for message in messages:
            if is_relations_log(message.conversation_id):
                if message.content_type != RELATIONS_RECORD:
                    continue
                await self.store.ensure_relations_log(message.conversation_id,
                                                      message.sent_at_ms)
                rows = decode_rows(message.payload)
                pairs = {tuple(sorted((user, other))) for user, other, _ in rows}
                await self._put(pairs, rows)
                self.records_applied += 1
            elif (read := read_of(message)) is not None:
                reads.append(read)
        if reads:
            await self.store.merge_reads(reads)
            self.reads_merged += len(reads)

    async def _put(self, pairs: set[tuple[str, ...]], rows: Rows) -> None:
        async with AsyncExitStack() as stack:  # the pair's cached rows go with the write
            for pair in sorted(pairs):
                await stack.enter_async_context(self.changing(pair[0], pair[-1]))
            await self.store.put_relations(rows)
