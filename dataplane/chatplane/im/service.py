"""Business logic of messaging: who may send where, sequencing, fan-out, sync.

The order of a send is what makes delivery exactly-once: check membership,
append (sequence + store + inbox entries, durable, idempotent on cid), and
only then ack the sender and hand the inbox entries to the state tier. A
resend of an acked cid gets the original ack and delivers nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Protocol

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.delivery.dedup import CidAllocator
from chatplane.im import requests
from chatplane.im.groups import SYSTEM_GROUP, Groups
from chatplane.im.hotcache import HotCache
from chatplane.im.inboxes import Inboxes, InboxRing, Ticket
from chatplane.im.invalidation import LocalInvalidations, Unannounced, Versions
from chatplane.im.leases import Leases, NotOwner
from chatplane.im.membercache import MemberCache
from chatplane.im.social import Social
from chatplane.protocol.bounds import Bounds
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.rates import UserRates
from chatplane.settings import Abuse, Limits
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    AppendResult,
    Conversation,
    ConversationNotFound,
    Fenced,
    InboxItem,
    Member,
    SendRequest,
    Storage,
    StorageUnavailable,
    StoredMessage,
    events_conversation_id,
    valid_id,
)
from chatplane.v1 import frames_pb2 as pb

# member ids the caches of conversations and of member lists (with roles) hold:
# about 660,000 1:1 chats, or 200 groups of 10,000
CONVERSATION_CACHE_IDS = 2_000_000
MEMBER_LIST_CACHE_IDS = 200_000
SCAN_MEMBERS = 64  # above: membership is looked up in a set (ImService.is_member)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_member(user_id: str, conversation_id: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, f"{user_id} is not a member of {conversation_id!r}")


def _unavailable(exc: Exception) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE, f"storage unavailable, retry: {exc}")


class Deliverer(Protocol):
    """Where sequenced messages go: the state tier (in process, state/service.py,
    or remote, state/client.py)."""

    def deliver(self, items: Iterable[InboxItem]) -> int:
        """Inbox entries, for every connected device of their users."""

    def deliver_group(self, conversation_id: str, members: Sequence[str],
                      message: StoredMessage) -> None:
        """A large group's message (no inbox entries), for its online members."""


class Owners(InboxRing, Protocol):
    """The im ring as this instance sees it (cluster only; im/forward.py)."""

    async def owns(self, conversation_id: str) -> bool: ...

    async def append_event(self, request: SendRequest) -> bool: ...


class HomeRouter(Protocol):
    """Home regions (regions/homes.py): where a conversation is sequenced."""

    async def sequence_elsewhere(self, request: SendRequest) -> AppendResult | None:
        """None when this region sequences the send, else the home region's ack."""

    def committed(self) -> None:
        """A message of a homed conversation was sequenced here."""

    async def settle(self, conversation_id: str, log_position: int) -> None:
        """Return once a send sequenced here, at `log_position` of the replicated log
        (`AppendResult.log_position`), may be acked (sync durability: another region
        applied it); UNAVAILABLE, retriable, when none did in time."""

    def deliver_when_confirmed(self, conversation_id: str, log_position: int,
                               deliver: Callable[[], None]) -> None:
        """Run `deliver` (the push to this region's devices) once the message sequenced
        here may be acked, never before (sync: a peer applied it)."""

    async def place_here(self, conversation_id: str) -> None:
        """A new group, made here under a fresh id: homed in this region."""

    async def group_op_elsewhere(self, user_id: str, device_id: str,
                                 op: pb.GroupOp) -> pb.GroupOpAck | None:
        """None when this region applies the group change, else the home region's ack."""

    async def admin_change_elsewhere(self, conversation_id: str, add: list[str],
                                     remove: list[str], dissolve: bool) -> int | None:
        """None when this region applies the admin API's change, else the home's seq."""


class ImService:
    def __init__(
        self,
        storage: Storage,
        state: Deliverer,
        limits: Limits,
        clock_ms: Callable[[], int] = _now_ms,
        social: SocialSettings | None = None,
        server_id: str = "im",
        fenced: bool = False,
        owners: Owners | None = None,
        abuse: Abuse | None = None,
        versions: Versions | None = None,
    ) -> None:
        self.storage = storage
        # versions of what is cached of membership, relations and conversation
        # settings: one process drops at once; a cluster reads a Redis stream
        # (im/invalidation.py, docs/caches.md)
        self.versions: Versions = versions or LocalInvalidations()
        self.state = state
        self.limits = limits
        self.bounds = Bounds.from_limits(limits)  # what a request field may hold
        self.clock_ms = clock_ms
        self.social_settings = social or SocialSettings()
        abuse = abuse or Abuse()
        # abuse.group_add_requires_consent: non-friends added to a group are invited
        self.group_consent = bool(abuse.group_add_requires_consent)
        # group invitations per inviter, per process (docs/operations.md, "Abuse limits")
        self.invite_rates = UserRates(abuse.invite_rate_per_user_s, abuse.invite_burst_per_user)
        self.server_id = server_id
        # Server-made entries (events, group changes by the admin API) are
        # idempotent on (sender, device, cid): a device name unique to this
        # process keeps two instances' cids from ever colliding.
        self.event_device = f"{server_id}-{uuid.uuid4().hex[:8]}"
        # (stamp, conversation) and (stamp, members), hot ones kept (im/membercache.py)
        self._conversations: MemberCache[tuple[str, Conversation]] = MemberCache(
            "conversation", CONVERSATION_CACHE_IDS)
        # big groups' members as a set, keyed by the members tuple it was made from
        self._member_sets: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        self._events_ready: set[str] = set()
        self._spans: dict[tuple[str, str], tuple[str, tuple[int, int]]] = {}
        self._member_lists: MemberCache[tuple[str, list[Member]]] = MemberCache(
            "member_list", MEMBER_LIST_CACHE_IDS)
        self.versions.on("members", self.forget_members, self._forget_all)
        self.versions.on("settings", self.forget_members, self._forget_all)
        self.social = Social(self)
        self.groups = Groups(self)
        self.hot = HotCache(self.social_settings.hot_cache_messages)
        self._event_cids = CidAllocator()
        # in a cluster, events for users served elsewhere go to their owner,
        # and so do a message's inbox entries for them (im/inboxes.py)
        self.owners = owners
        self.inboxes = Inboxes(storage, owners, state) if owners is not None else None
        # fenced: one of several im instances (docs/cluster.md, "Ownership")
        self.leases = Leases(storage, server_id, self._forget_conversation, enabled=fenced,
                             recover=self.inboxes.recover if self.inboxes is not None else None)
        self.sent = 0
        self.duplicates = 0
        # several regions (`up` with peers): sends of conversations homed elsewhere
        # go there (regions/homes.py); None: this process sequences everything
        self.homes: HomeRouter | None = None

    def families(self) -> Iterator[Metric]:
        """The service's counters and its hot tier's, for /metrics (cluster im and `up`)."""
        yield metrics.counter("chatplane_im_sent_total", "messages stored", self.sent)
        yield metrics.counter("chatplane_im_duplicates_total",
                              "resends answered with the original ack", self.duplicates)
        yield metrics.counter("chatplane_im_leases_taken_total", "conversation leases taken",
                              self.leases.acquired)
        yield metrics.counter("chatplane_im_appends_fenced_total",
                              "appends refused: lease taken over", self.leases.lost)
        yield from self.hot.families()
        yield from self._conversations.families()
        yield from self._member_lists.families()
        yield from self.versions.families()

    def _conversation_valid(self, conversation_id: str, stamp: str) -> bool:
        return (self.versions.valid("members", conversation_id, stamp)
                and self.versions.valid("settings", conversation_id, stamp))

    def cached_conversation(self, conversation_id: str) -> Conversation | None:
        """The cached entry, if its version is still good (im/invalidation.py)."""
        cached = self._conversations.get(
            conversation_id, lambda entry: self._conversation_valid(conversation_id, entry[0]))
        return None if cached is None else cached[1]

    def _cache_conversation(self, stamp: str, conversation: Conversation) -> None:
        self._conversations.put(conversation.conversation_id, (stamp, conversation),
                                len(conversation.members))

    async def conversation(self, conversation_id: str, *, fresh: bool = False) -> Conversation:
        """A conversation with its members; cached, versioned against changes
        made through any instance (im/invalidation.py), re-read when `fresh`."""
        conversation = None if fresh else self.cached_conversation(conversation_id)
        if conversation is None:
            stamp = self.versions.stamp()  # before the read: a change during it voids it
            try:
                conversation = await self.storage.conversation(conversation_id)
            except StorageUnavailable as exc:
                raise _unavailable(exc) from exc
            if conversation is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no conversation {conversation_id!r}")
            self._cache_conversation(stamp, conversation)
        return conversation

    def _forget_conversation(self, conversation_id: str) -> None:
        """Everything cached about one conversation (its lease moved)."""
        self.forget_members(conversation_id)
        self.hot.forget(conversation_id)
        if not conversation_id.startswith(("d:", "u:")):  # spans are kept for groups only
            for key in [k for k in self._spans if k[1] == conversation_id]:
                del self._spans[key]

    @contextlib.asynccontextmanager
    async def changing(self, kind: str, key: str) -> AsyncIterator[None]:
        """Around a storage write that changes what instances cache: announced
        before it (refused, retriable, if that cannot be) and after it,
        whatever it did (im/invalidation.py)."""
        try:
            await self.versions.begin(kind, key)
        except Unannounced as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"{exc}; retry") from exc
        try:
            yield
        finally:
            await self.versions.end(kind, key)

    def _forget_all(self) -> None:
        """Announcements were missed for good (im/invalidation.py, `flush`)."""
        self._conversations.clear()
        self._member_lists.clear()
        self._member_sets.clear()
        self._spans.clear()

    async def hold(self, conversation_id: str) -> tuple[int | None, bool]:
        """This instance's lease of the conversation (taken if needed):
        (epoch, taken just now). See im/leases.py."""
        try:
            return await self.leases.hold(conversation_id)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc

    async def sequenced(self, conversation_id: str,
                        append: Callable[[int | None], Awaitable[AppendResult]], *,
                        take_back: bool) -> AppendResult:
        """`append(fence)` under this instance's lease. Refused (another
        instance took the lease): with take_back, take it again and retry
        (server-made entries, which any instance may write); else NotOwner
        (a client's send, which the gateway retries on the new owner)."""
        refused = NotOwner(conversation_id)
        for _ in range(3):
            fence, _ = await self.hold(conversation_id)
            try:
                return await append(fence)
            except Fenced as exc:
                refused = self.leases.lose(conversation_id, fence)
                if not take_back:
                    raise refused from exc
        raise refused

    async def appended(self, conversation_id: str, recipients: Sequence[str],
                       call: Callable[[int | None, Collection[str] | None], Awaitable[AppendResult]],
                       *, take_back: bool, group_change: bool = False) -> AppendResult:
        """`call(fence, inboxes)` under this instance's lease (`sequenced`),
        then, in a cluster, the entries of recipients whose inboxes other
        instances write, by them (im/inboxes.py); returns once every entry
        is durable. `recipients`: those this instance knows of (storage may
        add a group change's; they are owed too)."""
        inboxes = self.inboxes
        if inboxes is None or not (recipients or group_change):  # one process, or no entries
            return await self.sequenced(conversation_id, lambda fence: call(fence, None),
                                        take_back=take_back)
        remote = await inboxes.remote(recipients)
        queue = await inboxes.enter(conversation_id)
        try:
            tickets: list[Ticket] = []

            async def attempt(fence: int | None) -> AppendResult:
                ticket, now = inboxes.ticket(queue, recipients, remote, group_change=group_change)
                tickets.append(ticket)
                # Started in ticket order (tasks run in the order they were
                # made, each straight into storage's queue); its outcome goes to
                # the ticket even if this caller stops waiting (storage goes on).
                append = asyncio.ensure_future(call(fence, now))

                def settle(done: asyncio.Future[AppendResult]) -> None:
                    failed = done.cancelled() or done.exception() is not None
                    inboxes.appended(conversation_id, queue, ticket,
                                     None if failed else done.result(), recipients)

                append.add_done_callback(settle)
                return await asyncio.shield(append)

            result = await self.sequenced(conversation_id, attempt, take_back=take_back)
            await asyncio.shield(tickets[-1].done)  # StorageUnavailable: the resend finishes it
            return result
        finally:
            inboxes.leave(conversation_id, queue)

    def is_member(self, conversation: Conversation, user_id: str) -> bool:
        """`user_id in conversation.members`, without scanning 10,000 ids at
        every send into a large group (a set per members tuple: a re-read
        conversation, with new members, gets a new one)."""
        members = conversation.members
        if len(members) <= SCAN_MEMBERS:
            return user_id in members
        cached = self._member_sets.get(conversation.conversation_id)
        if cached is None or cached[0] is not members:
            if len(self._member_sets) > 256:
                self._member_sets.clear()
            cached = self._member_sets[conversation.conversation_id] = (members, frozenset(members))
        return user_id in cached[1]

    def forget_members(self, conversation_id: str) -> None:
        self._conversations.pop(conversation_id)
        self._member_lists.pop(conversation_id)
        self._member_sets.pop(conversation_id, None)

    async def member_list(self, conversation_id: str) -> list[Member]:
        """Members with roles and join seqs, cached like `conversation`."""
        cached = self._member_lists.get(
            conversation_id, lambda entry: self.versions.valid("members", conversation_id, entry[0]))
        if cached is not None:
            return cached[1]
        stamp = self.versions.stamp()
        members = await self.storage.members(conversation_id)
        self._member_lists.put(conversation_id, (stamp, members), len(members))
        return members

    async def require_member(self, user_id: str, conversation_id: str, *,
                             fresh: bool = False) -> Conversation:
        try:
            conversation = await self.conversation(conversation_id, fresh=fresh)
        except ProtocolError as exc:
            if exc.code is ErrorCode.NOT_FOUND:  # do not tell strangers what exists
                raise ProtocolError(
                    ErrorCode.FORBIDDEN, f"{user_id} is not a member of {conversation_id!r}"
                ) from exc
            raise
        if not self.is_member(conversation, user_id):
            if not fresh:  # cached before the user joined (through another instance)?
                return await self.require_member(user_id, conversation_id, fresh=True)
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"{user_id} is not a member of {conversation_id!r}"
            )
        return conversation

    def deliver(self, result: AppendResult, group_members: Sequence[str] = ()) -> None:
        """Hand a new append to the state tier: its inbox entries, and for a
        large group (read diffusion) the message for the online members."""
        if result.duplicate:
            self.duplicates += 1
            return
        self.sent += 1
        self.hot.add(result.message)
        if result.inbox:
            self.state.deliver(result.inbox)
        if group_members:
            self.state.deliver_group(result.message.conversation_id, group_members,
                                     result.message)

    def is_large(self, members: Sequence[str]) -> bool:
        return len(members) > self.social_settings.large_group_threshold

    def next_event_cid(self) -> int:
        return self._event_cids.next()

    async def emit(self, user_id: str, event: pb.Event,
                   once: tuple[str, int] | None = None) -> None:
        """Append an event to the user's event conversation (every device of
        the user receives it through its inbox): here, or in a cluster by the
        conversation's owner, so its lease does not move (im/forward.py).
        `once` = (key, n): an event that a retried request emits again is
        stored once (the append's idempotency on sender device and cid)."""
        device, cid = once if once is not None else (self.event_device, self.next_event_cid())
        request = SendRequest(
            conversation_id=events_conversation_id(user_id), sender=user_id,
            sender_device=device, cid=cid, text="",
            message_id=uuid.uuid4().hex, sent_at_ms=self.clock_ms(),
            payload=event.SerializeToString(), content_type=f"event/{event.WhichOneof('kind')}")
        if self.owners is not None and await self.owners.append_event(request):
            return
        await self.append_event(request)

    async def append_event(self, request: SendRequest) -> AppendResult:
        """Store and deliver one event (idempotent on its sender, device and
        cid: a repeat is answered with the original and delivers nothing)."""
        user_id = request.sender
        try:
            if user_id not in self._events_ready:
                await self.storage.ensure_events(user_id, self.clock_ms())
                self._events_ready.add(user_id)
            result = await self.sequenced(request.conversation_id, lambda fence: self.storage.append(
                dataclasses.replace(request, fence=fence), (user_id,)), take_back=True)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        self.deliver(result)
        return result

    async def new_group_id(self) -> str:
        """A fresh group id that this instance owns on the ring, so the group's
        first changes need no lease move (two tries on average with 2 ims)."""
        conversation_id = f"g:{uuid.uuid4().hex}"
        for _ in range(64):
            if self.owners is None or await self.owners.owns(conversation_id):
                break
            conversation_id = f"g:{uuid.uuid4().hex}"
        return conversation_id

    async def open_direct(self, user_id: str, peer_user_id: str) -> Conversation:
        if not valid_id(peer_user_id):
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"invalid user id {peer_user_id!r}")
        if self.social_settings.direct_requires_friendship and peer_user_id != user_id:
            relation = await self.storage.relation(user_id, peer_user_id)
            if not relation.friend:
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{user_id} and {peer_user_id} are not friends")
        stamp = self.versions.stamp()
        try:
            conversation = await self.storage.ensure_direct(user_id, peer_user_id, self.clock_ms())
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        self._cache_conversation(stamp, conversation)
        return conversation

    async def _direct_here(self, user_id: str, conversation_id: str) -> None:
        """Several regions: a 1:1 chat begun in another region (opened there, or
        forwarded here to its home) exists here from its member's first send, as if
        the member had opened it here; its messages arrive by replication."""
        parts = conversation_id.split(":")
        if (len(parts) == 3 and parts[0] == "d" and user_id in parts[1:]
                and self._conversations.peek(conversation_id) is None):
            await self.open_direct(user_id, parts[2] if user_id == parts[1] else parts[1])

    async def send(
        self,
        user_id: str,
        device_id: str,
        conversation_id: str,
        cid: int,
        text: str,
        payload: bytes = b"",
        content_type: str = "",
    ) -> AppendResult:
        if cid <= 0:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "cid must be > 0")
        if len(text.encode()) > self.limits.max_text_bytes:
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"text over {self.limits.max_text_bytes} bytes"
            )
        if content_type.startswith(("system/", "event/")):
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "system/ and event/ types are reserved")
        if self.homes is not None:
            await self._direct_here(user_id, conversation_id)
        conversation = await self.require_member(user_id, conversation_id)
        if (await self.hold(conversation_id))[1]:  # just taken: read it again, fresh
            conversation = await self.require_member(user_id, conversation_id)
        if conversation.kind == EVENTS:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the events conversation is read-only")
        if conversation.kind == DIRECT:
            await self.social.check_direct_allowed(user_id, conversation_id, conversation.members)
        elif conversation.extra.get("dissolved"):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"group {conversation_id!r} is dissolved")
        request = SendRequest(
            conversation_id=conversation_id,
            sender=user_id,
            sender_device=device_id,
            cid=cid,
            text=text,
            message_id=os.urandom(16).hex(),
            sent_at_ms=self.clock_ms(),
            payload=payload,
            content_type=content_type or "text",
        )
        if self.homes is not None:
            forwarded = await self.homes.sequence_elsewhere(request)
            if forwarded is not None:  # stored by the home; delivered here by replication
                return forwarded
        large = conversation.kind == GROUP and self.is_large(conversation.members)
        try:
            # a large group is read-diffused: the timeline only, no inbox entries
            recipients = () if large else conversation.members
            result = await self.appended(conversation_id, recipients, lambda fence, inboxes: (
                self.storage.append(dataclasses.replace(request, fence=fence), recipients,
                                    inboxes)), take_back=False)
        except ConversationNotFound as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, str(exc)) from exc
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        if self.homes is None or result.duplicate:
            self.deliver(result, conversation.members if large else ())
        else:  # pushed once it may be acked (sync: in another region too)
            self.homes.deliver_when_confirmed(conversation_id, result.log_position, lambda: (
                self.deliver(result, conversation.members if large else ())))
        if self.homes is not None:
            if not result.duplicate:
                self.homes.committed()
            # a resend's duplicate waits too: its original may never have been confirmed
            batch = requests.SETTLE_LATER.get()
            if batch is not None:  # im/requests.py's handle_sends settles them at once
                batch.append((conversation_id, result.log_position))
            else:
                await self.homes.settle(conversation_id, result.log_position)
        return result

    async def settle(self, appended: Sequence[tuple[str, int]]) -> None:
        """Sends appended here as home, deferred by requests.SETTLE_LATER: once settled at
        the furthest log position of each conversation (so one device's pipelined
        sends wait one cross-region round trip in sync, not one each)."""
        if self.homes is None:
            return
        furthest: dict[str, int] = {}
        for conversation_id, position in appended:
            furthest[conversation_id] = max(furthest.get(conversation_id, 0), position)
        for conversation_id, position in furthest.items():
            await self.homes.settle(conversation_id, position)

    async def replicated(self, messages: Sequence[StoredMessage],
                         items: Sequence[InboxItem]) -> None:
        """Another region's messages, just stored here (regions/replication.py): into
        the hot tier, their inbox entries to this region's devices, and large groups'
        messages to their members online here."""
        for message in messages:
            if message.content_type == SYSTEM_GROUP:  # a replayed change: members moved
                self.forget_members(message.conversation_id)
                for key in [k for k in self._spans if k[1] == message.conversation_id]:
                    del self._spans[key]
            self.hot.add(message)
        if items:
            self.state.deliver(items)
        await self.groups.replicated_large(messages)

    async def handle(self, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
        """A client request frame in, its reply (or Error) frame out."""
        return await requests.handle(self, user_id, device_id, frame)

    async def handle_sends(self, user_id: str, device_id: str,
                           frames: Sequence[pb.Frame]) -> list[pb.Frame]:
        """One device's send frames into one conversation, in cid order: the
        replies, in the same order (im/requests.py, `handle_sends`)."""
        return await requests.handle_sends(self, user_id, device_id, frames)

    async def sync(self, user_id: str, after_seq: int, limit: int) -> tuple[list[InboxItem], int]:
        limit = max(1, min(limit or self.limits.max_sync_page, self.limits.max_sync_page))
        try:
            items = await self.storage.inbox(user_id, after_seq, limit + 1)
            head = await self.storage.inbox_head(user_id)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        return items, head

    @property
    def store_id(self) -> str:
        """The storage's id (LoginAck.store_id): inbox seqs count in it."""
        return self.storage.store_id

    async def inbox_head(self, user_id: str) -> int:
        try:
            return await self.storage.inbox_head(user_id)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc

    async def group_heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        """Each conversation's highest seq (the gateways' head check of large
        groups); absent conversations count 0."""
        async def head(conversation_id: str) -> int:
            newest = await self.storage.history(conversation_id, before_seq=None, after_seq=None,
                                                limit=1)
            return max(self.hot.head(conversation_id), newest[-1].seq if newest else 0)

        ids = list(dict.fromkeys(conversation_ids))
        try:
            found = await asyncio.gather(*(head(c) for c in ids))
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        return dict(zip(ids, found, strict=True))

    async def visible_range(self, user_id: str, conversation_id: str) -> tuple[int, int]:
        """The seqs the user may read: (lowest, highest or 0 for "up to the
        head"). Group members see from their join; former members up to their
        leave (so a removed member can still fetch what it missed before the
        removal); strangers nothing (FORBIDDEN)."""
        conversation = await self.conversation_or_forbidden(user_id, conversation_id)
        if conversation.kind != GROUP:
            if not self.is_member(conversation, user_id):
                raise _not_member(user_id, conversation_id)
            return 1, 0
        key = (user_id, conversation_id)
        cached = self._spans.get(key)
        if cached is not None and self.versions.valid("members", conversation_id, cached[0]):
            span = cached[1]
        else:
            stamp = self.versions.stamp()
            try:
                found = await self.storage.membership_span(user_id, conversation_id)
            except StorageUnavailable as exc:
                raise _unavailable(exc) from exc
            if found is None:
                raise _not_member(user_id, conversation_id)
            span = found
            self._spans[key] = (stamp, span)
            while len(self._spans) > 200_000:
                self._spans.pop(next(iter(self._spans)))
        joined, left = span
        if left == 0 and not self.is_member(conversation, user_id):
            raise _not_member(user_id, conversation_id)
        return max(joined, 1), left

    def forget_spans(self, conversation_id: str, users: Iterable[str]) -> None:
        for user in users:
            self._spans.pop((user, conversation_id), None)

    async def conversation_or_forbidden(self, user_id: str, conversation_id: str) -> Conversation:
        try:
            return await self.conversation(conversation_id)
        except ProtocolError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise _not_member(user_id, conversation_id) from exc
            raise

    async def history(
        self,
        user_id: str,
        conversation_id: str,
        before_seq: int,
        after_seq: int,
        limit: int,
    ) -> tuple[list[StoredMessage], int, bool]:
        lowest, highest = await self.visible_range(user_id, conversation_id)
        limit = max(1, min(limit or 50, self.limits.max_history_page))
        before = before_seq or None
        if highest:
            before = min(before or highest + 1, highest + 1)
        head = self.hot.head(conversation_id)
        cached = self._conversations.peek(conversation_id)
        if cached is not None:  # a lower bound of the head: any version will do
            head = max(head, cached[1].head_seq)
        if after_seq:  # oldest first from a cursor: what clients pull to fill gaps
            messages = await self._page_after(conversation_id, max(after_seq, lowest - 1),
                                              limit + 1, before)
            has_more = len(messages) > limit
            return messages[:limit], max(head, messages[-1].seq if messages else 0), has_more
        try:  # newest first below `before`, above the floor
            messages = await self.storage.history(conversation_id, before_seq=before,
                                                  after_seq=None, limit=limit + 1)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        has_more = len(messages) > limit
        if has_more:
            messages = messages[1:]
        if lowest > 1 and messages and messages[0].seq <= lowest:
            messages = [m for m in messages if m.seq >= lowest]
            has_more = False
        return messages, max(head, messages[-1].seq if messages else 0), has_more

    async def _page_after(self, conversation_id: str, after: int, limit: int,
                          before: int | None) -> list[StoredMessage]:
        messages = self.hot.after(conversation_id, after, limit, before)
        if messages:
            return messages
        try:  # a miss, or empty, which may mean "appended by another instance"
            return await self.storage.history(conversation_id, before_seq=before, after_seq=after,
                                              limit=limit)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc

    async def group_deltas(self, user_id: str,
                           cursors: dict[str, int]) -> list[tuple[str, int, int, list[StoredMessage], bool]]:
        """For sync: each large group of the user with the messages after the
        client's cursor (or after joining), a bounded page each."""
        threshold = self.social_settings.large_group_threshold
        try:
            groups = await self.storage.large_groups_of(user_id, threshold)
        except StorageUnavailable as exc:
            raise _unavailable(exc) from exc
        deltas = []
        budget = self.limits.max_sync_page
        for conversation_id, head, joined in groups:
            after = max(cursors.get(conversation_id, 0), joined - 1)
            page: list[StoredMessage] = []
            if after < head and budget > 0:
                page = await self._page_after(conversation_id, after,
                                              min(budget, self.limits.max_history_page), None)
                budget -= len(page)
            last = page[-1].seq if page else after
            deltas.append((conversation_id, head, joined, page, last < head))
        return deltas
