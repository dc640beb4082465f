"""Sequencing and delivery: a message's way from a send to the state tier.

The order of a send is what makes delivery exactly-once: check membership,
append (sequence + store + inbox entries, durable, idempotent on cid), and
only then ack the sender and hand the inbox entries to the state tier. A
resend of an acked cid gets the original ack and delivers nothing twice.

A send goes through here one way: `send` checks it (membership from
im/membership.py, the 1:1 policy from im/social.py's `Relations`), asks the
home regions (regions/homes.py) whether this region sequences it, `appended`
stores it under the conversation's lease (im/leases.py; in a cluster the
other owners' inbox entries too, im/inboxes.py), `deliver` hands it to the
state tier, and the homes settle it. Group changes (im/groups.py) and events
(`emit`) take the same `appended`/`sequenced` and `deliver`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import hashlib
import os
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from typing import Protocol

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.delivery.dedup import CidAllocator
from chatplane.im.hotcache import HotCache
from chatplane.im.inboxes import Inboxes, InboxRing, Ticket
from chatplane.im.leases import Leases, NotOwner
from chatplane.im.membership import Membership, unavailable
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.regions.groupchanges import SYSTEM_GROUP, change_of
from chatplane.regions.unconfirmed import Unconfirmed
from chatplane.settings import Limits
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    AppendResult,
    ConversationNotFound,
    Fenced,
    InboxItem,
    SendRequest,
    Storage,
    StorageUnavailable,
    StoredMessage,
    events_conversation_id,
)
from chatplane.v1 import frames_pb2 as pb

# while set (a list), `Sequencer.send` leaves the durability wait of what it
# sequenced as home to its caller (im/requests.py, `handle_sends`):
# (conversation, log position)
SETTLE_LATER: contextvars.ContextVar[list[tuple[str, int]] | None] = contextvars.ContextVar(
    "settle_later", default=None)


def _fenced(request: SendRequest, fence: int | None) -> SendRequest:
    """`request` fenced with `fence`: itself when unfenced (one process: no
    copy per send; dataclasses.replace costs a getattr per field)."""
    return request if fence is request.fence else dataclasses.replace(request, fence=fence)


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


def _indexed(unconfirmed: Unconfirmed, call: Callable[
        [int | None, Collection[str] | None], Awaitable[AppendResult]]) -> Callable[
        [int | None, Collection[str] | None], Awaitable[AppendResult]]:
    """`call` (an append as home) with its result indexed as unconfirmed the moment
    storage returns it, and tracked while in flight, so a read whose query saw its row
    waits for the index (sync durability: reads serve nothing unconfirmed)."""
    async def append(fence: int | None, inboxes: Collection[str] | None) -> AppendResult:
        ticket = unconfirmed.begin()
        try:
            result = await call(fence, inboxes)
            unconfirmed.appended(result)
            return result
        finally:
            unconfirmed.end(ticket)
    return append


def _consume(task: asyncio.Future[AppendResult]) -> None:
    """A shielded append whose caller left: its failure is the resend's to see."""
    if not task.cancelled():
        task.exception()


class HomeRouter(Protocol):
    """Home regions (regions/homes.py): where a conversation is sequenced."""

    region: str  # this region's name

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

    async def users(self, users: Iterable[str]) -> None:
        """The users' homes settled before a message for them is stored: storage writes
        inbox entries only for the users homed in this region."""

    async def inboxes_here(self, recipients: Sequence[str]) -> list[str] | None:
        """The recipients whose entries this region writes as it stores the message
        (a shared keyspace: those it homes), None: every one (the store decides)."""

    def stored_here(self, result: AppendResult, recipients: Sequence[str],
                    here: Sequence[str] | None) -> None:
        """A message stored here as home (or a duplicate's original): on a shared
        keyspace the peers are told of the `recipients` not `here`."""

    async def told(self) -> None:
        """Returns once the notices `stored_here` made are kept (before the ack)."""

    def login(self, user_id: str) -> None:
        """A device of the user logged in here: its home placed here if it has none."""

    async def event_elsewhere(self, request: SendRequest) -> AppendResult | None:
        """None when this region homes the event's user (it appends it), else the ack
        of the user's home region it was forwarded to."""

    async def timeline_settled(self, conversation_id: str, log_position: int) -> None:
        """An event appended here as its user's home: UNAVAILABLE (not acked) when the
        user's home was moving away as it was sequenced (an admin move)."""

    async def group_op_elsewhere(self, user_id: str, device_id: str,
                                 op: pb.GroupOp) -> pb.GroupOpAck | None:
        """None when this region applies the group change, else the home region's ack."""

    async def admin_change_elsewhere(self, conversation_id: str, add: list[str],
                                     remove: list[str], dissolve: bool) -> int | None:
        """None when this region applies the admin API's change, else the home's seq."""


class DirectPolicy(Protocol):
    """Who may write to whom in a 1:1 chat (im/social.py, `Relations`)."""

    async def check_direct_allowed(self, user: str, conversation_id: str,
                                   members: tuple[str, ...]) -> None: ...


class Sequencer:
    def __init__(
        self,
        storage: Storage,
        state: Deliverer,
        membership: Membership,
        direct: DirectPolicy,
        hot: HotCache,
        limits: Limits,
        social: SocialSettings,
        clock_ms: Callable[[], int],
        server_id: str,
        fenced: bool,
        owners: Owners | None,
    ) -> None:
        self.storage = storage
        self.state = state
        self.membership = membership
        self.direct = direct
        self.hot = hot
        self.limits = limits
        self.social = social
        self.clock_ms = clock_ms
        # Server-made entries (events, group changes by the admin API) are
        # idempotent on (sender, device, cid): a device name unique to this
        # process keeps two instances' cids from ever colliding.
        self.event_device = f"{server_id}-{uuid.uuid4().hex[:8]}"
        self._event_cids = CidAllocator()
        self._events_ready: set[str] = set()
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
        # what was sequenced here as home and no peer confirmed: reads stop below it
        self.unconfirmed: Unconfirmed | None = None

    def families(self) -> Iterator[Metric]:
        yield metrics.counter("chatplane_im_sent_total", "messages stored", self.sent)
        yield metrics.counter("chatplane_im_duplicates_total",
                              "resends answered with the original ack", self.duplicates)
        yield metrics.counter("chatplane_im_leases_taken_total", "conversation leases taken",
                              self.leases.acquired)
        yield metrics.counter("chatplane_im_appends_fenced_total",
                              "appends refused: lease taken over", self.leases.lost)

    def _forget_conversation(self, conversation_id: str) -> None:
        """Everything cached about one conversation (its lease moved)."""
        self.membership.forget_conversation(conversation_id)
        self.hot.forget(conversation_id)

    # -- under the lease -------------------------------------------------------

    async def hold(self, conversation_id: str) -> tuple[int | None, bool]:
        """This instance's lease of the conversation (taken if needed):
        (epoch, taken just now). See im/leases.py."""
        try:
            return await self.leases.hold(conversation_id)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc

    async def sequenced(self, conversation_id: str,
                        append: Callable[[int | None], Awaitable[AppendResult]], *,
                        take_back: bool) -> AppendResult:
        """`append(fence)` under this instance's lease. Refused (another
        instance took the lease): with take_back, take it again and retry
        (server-made entries, which any instance may write); else NotOwner
        (a client's send, which the gateway retries on the new owner)."""
        if not self.leases.enabled:  # one process: no lease, no fence to be refused by
            return await append(None)
        refused: NotOwner | None = None  # made only when refused: a send pays no exception
        for _ in range(3):
            fence, _ = await self.hold(conversation_id)
            try:
                return await append(fence)
            except Fenced as exc:
                refused = self.leases.lose(conversation_id, fence)
                if not take_back:
                    raise refused from exc
        raise refused or NotOwner(conversation_id)

    async def appended(self, conversation_id: str, recipients: Sequence[str],
                       call: Callable[[int | None, Collection[str] | None], Awaitable[AppendResult]],
                       *, take_back: bool, group_change: bool = False) -> AppendResult:
        """`call(fence, inboxes)` under this instance's lease (`sequenced`),
        then, in a cluster, the entries of recipients whose inboxes other
        instances write, by them (im/inboxes.py); returns once every entry
        is durable. `recipients`: those this instance knows of (storage may
        add a group change's; they are owed too)."""
        unconfirmed = self.unconfirmed
        if unconfirmed is not None and unconfirmed.active:
            call = _indexed(unconfirmed, call)
        here: list[str] | None = None  # the entries this region writes (None: all)
        if self.homes is not None and recipients:  # who writes each inbox (user homes)
            await self.homes.users(recipients)
            here = await self.homes.inboxes_here(recipients)
        inboxes = self.inboxes
        if inboxes is None or not (recipients or group_change):  # one process, or no entries
            homes = self.homes
            if homes is None:
                return await self.sequenced(conversation_id, lambda fence: call(fence, None),
                                            take_back=take_back)

            async def stored() -> AppendResult:
                result = await self.sequenced(conversation_id, lambda fence: call(fence, here),
                                              take_back=take_back)
                homes.stored_here(result, recipients, here)  # a shared keyspace: told
                await homes.told()
                return result

            # the peers are told even when the caller goes (a forwarded send's handler
            # cancelled by a cut link): the append goes on in storage regardless, and a
            # notice made only at the resend would put the entry out of seq order
            task = asyncio.ensure_future(stored())
            task.add_done_callback(_consume)
            return await asyncio.shield(task)
        router = self.homes
        # a keyspace shared by regions (a cluster per region on CQL): the entries of
        # the users homed here only, written here by their inboxes' owners; the peer
        # regions are told of the others (regions/notices.py)
        writes = list(recipients) if here is None else list(here)
        remote = await inboxes.remote(writes)
        queue = await inboxes.enter(conversation_id)
        try:
            tickets: list[Ticket] = []

            async def appended_and_told(fence: int | None,
                                        now: Collection[str] | None) -> AppendResult:
                result = await call(fence, now)
                if here is None or router is None:
                    return result
                router.stored_here(result, recipients, here)
                await router.told()  # before the ack, as its inbox entries
                mine = frozenset(here)
                return dataclasses.replace(result, owed=tuple(u for u in result.owed
                                                              if u in mine))

            async def attempt(fence: int | None) -> AppendResult:
                ticket, now = inboxes.ticket(queue, writes, remote, group_change=group_change)
                tickets.append(ticket)
                # Started in ticket order (tasks run in the order they were
                # made, each straight into storage's queue); its outcome goes to
                # the ticket even if this caller stops waiting (storage goes on).
                append = asyncio.ensure_future(appended_and_told(fence, now))

                def settle(done: asyncio.Future[AppendResult]) -> None:
                    failed = done.cancelled() or done.exception() is not None
                    inboxes.appended(conversation_id, queue, ticket,
                                     None if failed else done.result(), writes)

                append.add_done_callback(settle)
                return await asyncio.shield(append)

            result = await self.sequenced(conversation_id, attempt, take_back=take_back)
            await asyncio.shield(tickets[-1].done)  # StorageUnavailable: the resend finishes it
            return result
        finally:
            inboxes.leave(conversation_id, queue)

    # -- delivery --------------------------------------------------------------

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
        return len(members) > self.social.large_group_threshold

    # -- events ----------------------------------------------------------------

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
            if self.homes is not None:  # the user's home appends it (user homes)
                forwarded = await self.homes.event_elsewhere(request)
                if forwarded is not None:
                    return forwarded
            result = await self.sequenced(request.conversation_id, lambda fence: self.storage.append(
                _fenced(request, fence), (user_id,)), take_back=True)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        self.deliver(result)
        if self.homes is not None:
            if not result.duplicate:
                self.homes.committed()  # in the log (homed with its user): wake its readers
            await self.homes.timeline_settled(request.conversation_id, result.log_position)
        return result

    async def new_group_id(self, key: tuple[str, str, int] | None = None) -> str:
        """A fresh group id that this instance owns on the ring, so the group's
        first changes need no lease move (two tries on average with 2 ims).
        With the create's key (user, device, cid) the id is that key's, whoever
        owns it: a resend or the gateway's retry on another instance finds the
        same group (the one that creates it takes the lease; the owner takes it
        back at the group's next change)."""
        if key is not None:  # (per region: a resend in another region is another create,
            # never one group homed in two regions that each placed it)
            return keyed_group_id(*key, self.homes.region if self.homes is not None else "")
        conversation_id = f"g:{uuid.uuid4().hex}"
        for _ in range(64):
            if self.owners is None or await self.owners.owns(conversation_id):
                break
            conversation_id = f"g:{uuid.uuid4().hex}"
        return conversation_id

    # -- a client's send -------------------------------------------------------

    async def _direct_here(self, user_id: str, conversation_id: str) -> None:
        """Several regions: a 1:1 chat begun in another region (opened there, or
        forwarded here to its home) exists here from its member's first send, as if
        the member had opened it here; its messages arrive by replication."""
        parts = conversation_id.split(":")
        if (len(parts) == 3 and parts[0] == "d" and user_id in parts[1:]
                and self.membership.peek(conversation_id) is None):
            await self.membership.open_direct(user_id, parts[2] if user_id == parts[1] else parts[1])

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
        max_text = self.limits.max_text_bytes
        if len(text) * 4 > max_text and len(text.encode()) > max_text:  # 4 bytes a char at most
            raise ProtocolError(
                ErrorCode.INVALID_ARGUMENT, f"text over {self.limits.max_text_bytes} bytes"
            )
        if content_type.startswith(("system/", "event/")):
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "system/ and event/ types are reserved")
        if self.homes is not None:
            await self._direct_here(user_id, conversation_id)
        membership = self.membership
        conversation = await membership.require_member(user_id, conversation_id)
        if self.leases.enabled and (await self.hold(conversation_id))[1]:  # just taken: read it again
            conversation = await membership.require_member(user_id, conversation_id)
        if conversation.kind == EVENTS:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the events conversation is read-only")
        if conversation.kind == DIRECT:
            await self.direct.check_direct_allowed(user_id, conversation_id, conversation.members)
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
                self.storage.append(_fenced(request, fence), recipients, inboxes)),
                take_back=False)
        except ConversationNotFound as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, str(exc)) from exc
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        if self.homes is None or result.duplicate:
            self.deliver(result, conversation.members if large else ())
        else:  # pushed once it may be acked (sync: in another region too)
            self.homes.deliver_when_confirmed(conversation_id, result.log_position, lambda: (
                self.deliver(result, conversation.members if large else ())))
        if self.homes is not None:
            if not result.duplicate:
                self.homes.committed()
            # a resend's duplicate waits too: its original may never have been confirmed
            batch = SETTLE_LATER.get()
            if batch is not None:  # im/requests.py's handle_sends settles them at once
                batch.append((conversation_id, result.log_position))
            else:
                await self.homes.settle(conversation_id, result.log_position)
        return result

    async def settle(self, appended: Sequence[tuple[str, int]]) -> None:
        """Sends appended here as home, deferred by SETTLE_LATER: once settled at
        the furthest log position of each conversation (so one device's pipelined
        sends wait one cross-region round trip in sync, not one each)."""
        if self.homes is None:
            return
        furthest: dict[str, int] = {}
        for conversation_id, position in appended:
            furthest[conversation_id] = max(furthest.get(conversation_id, 0), position)
        for conversation_id, position in furthest.items():
            await self.homes.settle(conversation_id, position)

    # -- another region's messages ---------------------------------------------

    async def replicated(self, messages: Sequence[StoredMessage],
                         items: Sequence[InboxItem]) -> None:
        """Another region's messages, just stored here (regions/replication.py): into
        the hot tier, their inbox entries to this region's devices, and large groups'
        messages to their members online here."""
        for message in messages:
            if message.content_type == SYSTEM_GROUP:  # a replayed change: members moved
                self.membership.forget_members(message.conversation_id)
                self.membership.forget_spans(message.conversation_id)
            self.hot.add(message)
        if items:
            self.state.deliver(items)
        await self._replicated_large(messages)

    async def _replicated_large(self, messages: Sequence[StoredMessage]) -> None:
        """A batch of groups' messages replicated here (in seq order per group): a large
        group's (read diffusion: no inbox entries, but for the users a change adds or
        removes) pushed to its members online here, as its home pushes them. A member
        whose membership changed within the batch is pushed only what follows its last
        change (it syncs the rest within its span), so nobody is pushed outside it."""
        by_group: dict[str, list[StoredMessage]] = {}
        for message in messages:
            if message.conversation_id.startswith("g:"):
                by_group.setdefault(message.conversation_id, []).append(message)
        for conversation_id, batch in by_group.items():
            try:
                conversation = await self.membership.conversation(conversation_id)
            except ProtocolError:
                continue  # storage unavailable: these members sync instead
            if not self.is_large(conversation.members):
                continue
            last_change, changed = 0, set()
            for message in batch:
                change = change_of(message)
                if change is not None:
                    last_change = message.seq
                    changed |= {u for u, _ in change.add} | set(change.remove)
            steady = [u for u in conversation.members if u not in changed]
            for message in batch:
                members = conversation.members if message.seq > last_change else steady
                self.state.deliver_group(conversation_id, members, message)


def keyed_group_id(user_id: str, device_id: str, cid: int, region: str = "") -> str:
    """The id of the group a create with this key makes in `region` ("": one
    region): the same on every instance and every resend, of the shape of a
    fresh one ("g:" and 32 hex)."""
    key = f"{user_id}\0{device_id}\0{cid}\0{region}".encode()
    return f"g:{hashlib.sha256(key).hexdigest()[:32]}"
