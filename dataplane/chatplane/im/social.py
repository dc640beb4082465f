"""Friends and read state: who may talk to whom, and who read what.

Every change is delivered like a message, so every device converges: a friend
change is an event in both users' event conversations ("u:<user>"), a read is
an event in the reader's own (its other devices clear their unread), and a
receipt is an event to the senders whose messages the read covers (1:1 and
groups up to the large-group threshold; larger groups compute lists on demand
only, DESIGN §4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from chatplane.im.invalidation import Versions, pair_key
from chatplane.im.membership import Membership
from chatplane.protocol.bounds import MAX_NOTE_CHARS as MAX_NOTE
from chatplane.protocol.bounds import Bounds
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    Conversation,
    Relation,
    Storage,
    StorageUnavailable,
    valid_id,
)
from chatplane.v1 import frames_pb2 as pb


class Events(Protocol):
    """Where a user's events are appended (im/sequencing.py, `Sequencer.emit`)."""

    async def emit(self, user_id: str, event: pb.Event,
                   once: tuple[str, int] | None = None) -> None: ...


class SocialRegions(Protocol):
    """Several regions (regions/social.py `SocialHomes`): where a pair's friend changes
    are decided, and how the deciding region writes them so that they replicate."""

    async def friend_op_elsewhere(self, user: str, device: str,
                                  op: pb.FriendOp) -> Relation | None:
        """None when this region decides the change, else the deciding home's answer."""

    async def record(self, user: str, other: str,
                     rows: Sequence[tuple[str, str, Relation]]) -> int:
        """Write the pair's rows with their replicated record; its log position."""

    async def settle(self, user: str, other: str, position: int) -> None:
        """Return once the record at `position` may be acked (sync: another region
        applied it); UNAVAILABLE, retriable, when no region did in time."""


def relation_pb(user_id: str, r: Relation) -> pb.Relation:
    return pb.Relation(user_id=user_id, friend=r.friend, request_sent=r.request_sent,
                       request_received=r.request_received, note=r.note, blocked=r.blocked,
                       updated_at_ms=r.updated_at_ms)


class Relations:
    """Who may write to whom in a 1:1 chat, from relations cached for sends."""

    def __init__(self, storage: Storage, versions: Versions, social: SocialSettings) -> None:
        self.storage = storage
        self.versions = versions
        self.social = social
        # (user, other) -> (stamp, relation): versioned like the im's other
        # caches (im/invalidation.py), so a change made through any instance
        # applies to sends here once announced, within the bound if not
        self._relations: dict[tuple[str, str], tuple[str, Relation]] = {}
        self._loading: dict[tuple[str, str], tuple[str, asyncio.Future[Relation]]] = {}
        versions.on("relation", self._forget_pair, self._forget_all)

    def _forget_pair(self, key: str) -> None:
        a, _, b = key.partition("|")
        for pair in ((a, b), (b, a)):
            self._relations.pop(pair, None)
            self._loading.pop(pair, None)  # later sends read the new rows

    def _forget_all(self) -> None:
        self._relations.clear()
        self._loading.clear()

    def _loaded(self, key: tuple[str, str], done: asyncio.Future[Relation]) -> None:
        loading = self._loading.get(key)
        if loading is not None and loading[1] is done:
            del self._loading[key]

    async def _relation(self, user: str, other: str) -> Relation:
        key = (user, other)
        versions = self.versions
        cached = self._relations.get(key)
        if cached is not None and versions.valid("relation", pair_key(user, other), cached[0]):
            return cached[1]
        # one read per miss, shared by the sends in flight meanwhile (a
        # device pipelines up to 32: each used to read on its own)
        loading = self._loading.get(key)
        if loading is None or not versions.valid("relation", pair_key(user, other), loading[0]):
            stamp = versions.stamp()  # before the read: a change during it voids it
            read: asyncio.Future[Relation] = asyncio.ensure_future(self.storage.relation(*key))
            loading = self._loading[key] = (stamp, read)
            read.add_done_callback(lambda done: self._loaded(key, done))
        stamp, read = loading
        relation = await asyncio.shield(read)
        if len(self._relations) > 100_000:
            self._relations.clear()
        self._relations[key] = (stamp, relation)
        return relation

    async def check_direct_allowed(self, user: str, conversation_id: str,
                                   members: tuple[str, ...]) -> None:
        """Blocks, and the friendship policy, for a send to a 1:1 conversation."""
        others = [m for m in members if m != user]
        if not others:
            return
        other = others[0]
        try:
            mine = await self._relation(user, other)
            theirs = await self._relation(other, user)
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        if theirs.blocked or mine.blocked:
            raise ProtocolError(ErrorCode.BLOCKED, f"{user} and {other} block each other")
        if self.social.direct_requires_friendship and not mine.friend:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} and {other} are not friends")


class Social:
    def __init__(self, storage: Storage, membership: Membership, events: Events,
                 social: SocialSettings, bounds: Bounds, clock_ms: Callable[[], int]) -> None:
        self.storage = storage
        self.membership = membership
        self.events = events
        self.social = social
        self.bounds = bounds
        self.clock_ms = clock_ms
        # several regions: a pair's changes are decided by one region (None: here)
        self.regions: SocialRegions | None = None
        # one change of a pair at a time here: a request and an accept that race are
        # decided one after the other (the second sees the first's rows)
        self._pairs: dict[str, tuple[asyncio.Lock, int]] = {}  # with its users

    # -- friends ---------------------------------------------------------------

    async def friend_op(self, user: str, op: pb.FriendOp, device: str = "") -> Relation:
        other = op.user_id
        if not valid_id(other) or other == user:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"invalid user id {other!r}")
        if len(op.note) > MAX_NOTE:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"note over {MAX_NOTE} characters")
        if self.regions is not None:
            forwarded = await self.regions.friend_op_elsewhere(user, device, op)
            if forwarded is not None:  # decided by the pair's home; here by replication
                return forwarded
        return await self.decide_friend_op(user, op)

    async def decide_friend_op(self, user: str, op: pb.FriendOp) -> Relation:
        """The change decided here, against this store's rows of the pair."""
        key = pair_key(user, op.user_id)
        lock, users = self._pairs.get(key) or (asyncio.Lock(), 0)
        self._pairs[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._decide(user, op)
        finally:
            lock, users = self._pairs[key]
            if users == 1:
                del self._pairs[key]
            else:
                self._pairs[key] = (lock, users - 1)

    async def _decide(self, user: str, op: pb.FriendOp) -> Relation:
        other = op.user_id
        storage = self.storage
        try:
            mine = await storage.relation(user, other)
            theirs = await storage.relation(other, user)
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        now = self.clock_ms()
        action = op.action
        notify_other = True
        if action == pb.REQUEST:
            if mine.blocked or theirs.blocked:
                raise ProtocolError(ErrorCode.BLOCKED, f"{user} and {other} block each other")
            if mine.friend:
                return await self._unchanged(user, other, mine, theirs)
            if mine.request_received:  # they asked first: this is an accept
                action = pb.ACCEPT
                mine, theirs = _friends(mine, theirs, now)
            else:
                mine = replace(mine, request_sent=True, note=op.note, updated_at_ms=now)
                theirs = replace(theirs, request_received=True, note=op.note, updated_at_ms=now)
        elif action == pb.ACCEPT and mine.friend:  # a resend after a lost reply
            return await self._unchanged(user, other, mine, theirs)
        elif action in (pb.ACCEPT, pb.DECLINE):
            if not mine.request_received:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no friend request from {other}")
            if action == pb.ACCEPT:
                mine, theirs = _friends(mine, theirs, now)
            else:
                mine, theirs = _strangers(mine, theirs, now)
        elif action == pb.REMOVE:
            if not (mine.friend or mine.request_sent):
                raise ProtocolError(ErrorCode.NOT_FOUND, f"{other} is not a friend")
            mine, theirs = _strangers(mine, theirs, now)
        elif action == pb.BLOCK:
            notify_other = mine.friend  # the blocked user only sees a friendship end
            mine, theirs = _strangers(mine, theirs, now)
            mine = replace(mine, blocked=True)
        elif action == pb.UNBLOCK:
            if not mine.blocked:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"{other} is not blocked")
            mine = replace(mine, blocked=False, updated_at_ms=now)
            notify_other = False
        else:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "unknown friend action")
        position = 0
        try:
            async with self.membership.changing("relation", pair_key(user, other)):
                rows = [(user, other, mine), (other, user, theirs)]
                if self.regions is not None:  # with a record every region applies
                    position = await self.regions.record(user, other, rows)
                else:
                    await storage.put_relations(rows)
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        event = pb.Event(friend=pb.FriendEvent(action=action, actor=user, user_id=other,
                                               note=op.note if action == pb.REQUEST else ""))
        await self.events.emit(user, event)
        if notify_other:
            if op.action == pb.BLOCK:
                event = pb.Event(friend=pb.FriendEvent(action=pb.REMOVE, actor=user, user_id=other))
            await self.events.emit(other, event)
        if self.regions is not None:  # the events first: the change is made, acked or not
            await self.regions.settle(user, other, position)
        return mine

    async def _unchanged(self, user: str, other: str, mine: Relation,
                         theirs: Relation) -> Relation:
        """A change that finds its result already there (a resend): answered as it
        stands; with regions, once the rows are in another region too (they are
        recorded again, and the answer waits like the original's)."""
        if self.regions is not None:
            async with self.membership.changing("relation", pair_key(user, other)):
                position = await self.regions.record(
                    user, other, [(user, other, mine), (other, user, theirs)])
            await self.regions.settle(user, other, position)
        return mine

    async def friends(self, user: str) -> pb.FriendsResponse:
        response = pb.FriendsResponse()
        try:
            rows = await self.storage.relations(user)
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        for other, r in rows:
            item = relation_pb(other, r)
            if r.friend:
                response.friends.append(item)
            if r.request_received:
                response.incoming.append(item)
            if r.request_sent:
                response.outgoing.append(item)
            if r.blocked:
                response.blocked.append(item)
        return response

    # -- read state ----------------------------------------------------------

    async def mark_read(self, user: str, conversation_id: str, seq: int) -> int:
        conversation = await self.membership.require_member(user, conversation_id)
        if conversation.kind == EVENTS:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "events are not marked read")
        try:
            # Events first, then the position: each event is keyed by what it
            # says (conversation, reader, read seq), so when a crash comes
            # between them the client's retry emits them again and storage
            # keeps one of each. (Position first, a retry would find nothing
            # to do and the events would be lost.)
            previous, target = await self.storage.mark_read(user, conversation_id, seq,
                                                            dry_run=True)
            if target > previous:
                await self._emit_read(user, conversation, previous, target)
            _, current = await self.storage.mark_read(user, conversation_id, seq)
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        return current

    async def _emit_read(self, user: str, conversation: Conversation, previous: int,
                         target: int) -> None:
        conversation_id = conversation.conversation_id
        await self.events.emit(user, pb.Event(read=pb.ReadEvent(conversation_id=conversation_id,
                                                                read_seq=target)),
                               once=(f"read/{conversation_id}", target))
        small = len(conversation.members) <= self.social.large_group_threshold
        if conversation.kind in (DIRECT, GROUP) and small:
            senders = await self._senders_between(conversation_id, previous, target, user)
            receipt = pb.Event(receipt=pb.ReceiptEvent(conversation_id=conversation_id,
                                                       reader=user, read_seq=target))
            for sender in sorted(senders):
                await self.events.emit(sender, receipt,
                                       once=(f"receipt/{conversation_id}/{user}", target))

    async def _senders_between(self, conversation_id: str, after: int, upto: int,
                               reader: str) -> set[str]:
        senders: set[str] = set()
        cursor = after
        while cursor < upto:
            page = await self.storage.history(conversation_id, after_seq=cursor,
                                              before_seq=upto + 1, limit=500)
            if not page:
                break
            senders.update(m.sender for m in page if not m.content_type.startswith("system/"))
            cursor = page[-1].seq
        senders.discard(reader)
        return senders

    async def receipts(self, user: str, conversation_id: str, seq: int, after_user: str,
                       limit: int) -> pb.ReceiptsResponse:
        conversation = await self.membership.require_member(user, conversation_id)
        if not 0 < seq <= conversation.head_seq:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT,
                                f"seq {seq} outside 1..{conversation.head_seq}")
        limit = max(1, min(limit or 1000, self.bounds.max_receipts_page))
        try:
            (message,) = await self.storage.history(conversation_id, after_seq=seq - 1,
                                                    before_seq=seq + 1, limit=1)
            members = await self.membership.member_list(conversation_id)
            positions = await self.storage.read_positions(conversation_id)
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        candidates = [m for m in members
                      if m.user_id > after_user and m.user_id != message.sender
                      and m.joined_seq <= seq]
        response = pb.ReceiptsResponse(has_more=len(candidates) > limit)
        for member in candidates[:limit]:
            target = response.read if positions.get(member.user_id, 0) >= seq else response.unread
            target.append(member.user_id)
        return response


def _friends(mine: Relation, theirs: Relation, now: int) -> tuple[Relation, Relation]:
    return (Relation(friend=True, blocked=mine.blocked, updated_at_ms=now),
            Relation(friend=True, blocked=theirs.blocked, updated_at_ms=now))


def _strangers(mine: Relation, theirs: Relation, now: int) -> tuple[Relation, Relation]:
    return (Relation(blocked=mine.blocked, updated_at_ms=now),
            Relation(blocked=theirs.blocked, updated_at_ms=now))
