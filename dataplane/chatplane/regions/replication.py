"""Replication between regions (DESIGN §5, docs/architecture.md "Regions"): what a home
region sequenced reaches every peer once and in order, through the embedded store's
replicated log (`storage.base.ReplicatedLog`).

Each region pulls each peer's log (`Region.Replicate`, a stream): the peer sends the
entries of the conversations it homes, in log order, from the position this region
applied last; this region applies each batch in one transaction that also moves its
cursor for that peer (`apply_log`: by (conversation, seq), a seq stored before is
skipped; a group's change events replay its membership changes at their seqs,
regions/groupchanges.py), then pushes the new inbox entries to its own connected devices. A cut link (a
stopped or restarted peer, a lost connection, a stream silent past `STALL_S`) is
reopened from the cursor in storage, so nothing is applied twice or skipped.

What an SRE sees: per peer in `/v1/peers` (`replication`: applied position, the peer's
head, lag in log positions, last batch, entries applied, last error, whether the peer
trimmed its log past this region's cursor) and as `chatplane_region_replication_*{peer}`;
this region's own log (retained entries, trimmed position, who holds the trim back:
regions/trimming.py) under `log` and as `chatplane_region_log_*`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.protocol.errors import ProtocolError
from chatplane.protocol.records import from_pb, to_pb
from chatplane.regions.failover import Failover
from chatplane.regions.fencing import Fences
from chatplane.regions.groupchanges import change_of
from chatplane.regions.homes import Homes, events_user
from chatplane.regions.social import SocialHomes, is_relations_log
from chatplane.regions.trimming import Trimming
from chatplane.storage.base import (
    CONVERSATION_HOME,
    USER_HOME,
    Home,
    InboxItem,
    LogBlocked,
    LogEntry,
    LogTrimmed,
    MembershipChange,
    ReplicatedLog,
    Storage,
    StorageError,
    StoredMessage,
)
from chatplane.supervision import Supervisor
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

BATCH = 256  # log positions per batch
HEARTBEAT_S = 1.0  # a caught-up stream says so this often (and carries the head)
STALL_S = 3.0  # no batch (not even a heartbeat) for this long: reopen the stream
RETRY_S = 0.2
TRIMMED_RETRY_S = 5.0  # the peer trimmed past our cursor: only a resync helps, ask rarely
TELL_TIMEOUT_S = 2.0  # one Region.Applied call
SETTLED_GROUPS = 65_536  # groups remembered as having their members' homes settled

# Applied entries go to this region's devices and caches (`Sequencer.replicated`).
Applied = Callable[[Sequence[StoredMessage], Sequence[InboxItem]], Awaitable[None]]


class BeyondLog(ValueError):
    """A peer names a position of this region's log that was never written."""


@dataclass
class PeerReplication:
    """How this region's copy of one peer's log stands."""

    applied_to: int = 0  # the peer's log position applied here (durable in storage)
    peer_head: int = 0  # the peer's newest log position, as it last said
    entries: int = 0  # messages applied since start
    inbox_entries: int = 0  # inbox entries of users the peer homes, applied since start
    batches: int = 0
    last_batch_at: float | None = None
    connected: bool = False
    reconnects: int = 0
    error: str = ""
    # the peer trimmed its log past our cursor (FAILED_PRECONDITION): entries are
    # missing here and only a resync from a snapshot (not built) brings them
    trimmed: bool = False
    # set when applied_to moved: the peer is told (Region.Applied, its sync acks wait on it)
    moved: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def lag(self) -> int:
        return max(0, self.peer_head - self.applied_to)

    def view(self, now: float) -> dict[str, Any]:
        return {"applied_to": self.applied_to, "peer_head": self.peer_head, "lag": self.lag,
                "connected": self.connected, "entries_applied": self.entries,
                "inbox_entries_applied": self.inbox_entries,
                "last_batch_s_ago": (None if self.last_batch_at is None
                                     else round(now - self.last_batch_at, 3)),
                "reconnects": self.reconnects, "error": self.error,
                "trimmed_past_cursor": self.trimmed}


def _log_of(storage: Storage) -> ReplicatedLog:
    if not isinstance(storage, ReplicatedLog):
        raise StorageError(f"the {storage.name} backend keeps no replicated log: cross-region"
                           " replication runs on the embedded store (docs/architecture.md)")
    return storage


class Replication:
    """Serves this region's log to its peers and applies each peer's log here."""

    def __init__(self, homes: Homes, storage: Storage, applied: Applied,
                 large_above: int | None = None, failover: Failover | None = None,
                 poll_s: float = HEARTBEAT_S) -> None:
        self.homes = homes
        # a caught-up stream reads the log again this often: commits of other processes
        # on the same store (a cluster's other ims) wake no event here
        self.poll_s = min(poll_s, HEARTBEAT_S)
        self.storage = storage
        self.log = _log_of(storage)
        self.applied = applied
        self.large_above = large_above  # social.large_group_threshold: read diffusion above
        self.peers = {name: PeerReplication() for name in homes.peers}
        self.trimming = (None if homes.durability is None
                         else Trimming(self.log, homes.durability))
        self._tasks: list[asyncio.Task[None]] = []
        self.stale_skipped = 0  # a peer's entries of a home it lost, not applied
        # groups whose members' homes were settled here (user homes): after that only
        # the users a change adds need settling
        self._settled_groups: set[str] = set()
        self.failover = failover  # takes over a lost peer's homes (regions/failover.py)
        self.social: SocialHomes | None = None  # friends and reads (regions/social.py)
        if failover is not None:  # a fence answers the cursor of the fenced peer's log
            failover.fences.applied_to = lambda peer: self.peers[peer].applied_to

    # -- the serving side (Region.Replicate) ---------------------------------

    async def serve(self, request: rpb.ReplicateRequest) -> AsyncIterator[rpb.LogBatch]:
        after = request.after
        durability = self.homes.durability
        if durability is not None:  # the reader's cursor is in its store: applied there
            if not await durability.applied(request.region, after):
                raise BeyondLog(f"after {after} is past this region's log")
        said = time.monotonic()  # when the stream last carried something
        while True:
            changed = self.homes.changed  # taken before reading: no commit is missed
            try:
                entries, scanned_to, head = await self.log.log_after(after, BATCH,
                                                                     self.homes.region)
            except LogTrimmed:
                if self.trimming is not None:
                    self.trimming.refuse(request.region)
                raise
            if durability is not None:
                durability.note_head(head)
            held = self.homes.held_back(entries)
            if held is not None:  # past an admin move's hand-off head: not served yet
                entries = [e for e in entries if e.lsn < held]
                scanned_to = held - 1
            if scanned_to > after:
                yield rpb.LogBatch(entries=[
                    rpb.LogEntry(lsn=e.lsn, epoch=e.epoch, message=to_pb(e.message),
                                 inbox_user=e.inbox_user, inbox_seq=e.inbox_seq)
                    for e in entries], scanned_to=scanned_to, head=head)
                after, said = scanned_to, time.monotonic()
                continue
            try:
                await asyncio.wait_for(changed.wait(), self.poll_s)
            except TimeoutError:
                if time.monotonic() - said >= HEARTBEAT_S - self.poll_s / 2:
                    yield rpb.LogBatch(scanned_to=after, head=head)
                    said = time.monotonic()

    # -- the applying side ---------------------------------------------------

    async def applied_by(self, request: rpb.AppliedRequest) -> rpb.AppliedReply:
        """`Region.Applied` on this side: a peer applied our log up to a position."""
        durability = self.homes.durability
        if durability is not None and not await durability.applied(request.region,
                                                                   request.applied_to):
            raise BeyondLog(f"applied_to {request.applied_to} is past this region's log")
        return rpb.AppliedReply()

    def start(self, supervisor: Supervisor) -> None:
        self._tasks = [supervisor.spawn(f"replicate:{name}", functools.partial(self._run, name))
                       for name in self.peers]
        self._tasks += [supervisor.spawn(f"applied:{name}", functools.partial(self._tell, name))
                        for name in self.peers]
        if self.trimming is not None:
            self._tasks.append(supervisor.spawn("region-log-trim", self.trimming.run))
        if self.failover is not None:
            self._tasks.append(supervisor.spawn("region-failover", self.failover.run))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self, peer: str) -> None:
        state = self.peers[peer]
        while True:
            try:
                await self._follow(peer, state)
            except (grpc.aio.AioRpcError, StorageError, TimeoutError) as exc:
                error = (f"{exc.code().name}: {exc.details()}"
                         if isinstance(exc, grpc.aio.AioRpcError) else f"{type(exc).__name__}: {exc}")
                trimmed = (isinstance(exc, grpc.aio.AioRpcError)
                           and exc.code() is grpc.StatusCode.FAILED_PRECONDITION)
                if error != state.error:
                    (log.error if trimmed else log.warning)(
                        "replication from %s stopped: %s", peer, error)
                state.error = error
                if trimmed:
                    state.trimmed = True
                    state.connected = False
                    await asyncio.sleep(TRIMMED_RETRY_S)
            except Exception as exc:  # a dead loop would stop replication silently
                log.exception("replication from %s failed", peer)
                state.error = f"failed: {exc!r}"
            state.connected = False
            state.reconnects += 1
            await asyncio.sleep(RETRY_S)

    async def _tell(self, peer: str) -> None:
        """Tells `peer` how far its log is applied here (`Region.Applied`), after each
        applied batch: the newest position only, so a slow link coalesces reports."""
        state = self.peers[peer]
        stub = rgrpc.RegionStub(self.homes.channels(peer))
        told = 0
        while True:
            await state.moved.wait()
            state.moved.clear()
            position = state.applied_to
            if position <= told:
                continue
            try:
                await stub.Applied(rpb.AppliedRequest(region=self.homes.region,
                                                      applied_to=position), timeout=TELL_TIMEOUT_S)
                told = position
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                    log.warning("peer %s does not take Region.Applied: not told", peer)
                    return
                await asyncio.sleep(RETRY_S)
                state.moved.set()  # tell it again

    async def _follow(self, peer: str, state: PeerReplication) -> None:
        state.applied_to = await self.log.log_cursor(peer)
        stub = rgrpc.RegionStub(self.homes.channels(peer))
        call = stub.Replicate(rpb.ReplicateRequest(region=self.homes.region,
                                                   after=state.applied_to))
        try:
            stream = call.__aiter__()
            while True:
                batch = await asyncio.wait_for(stream.__anext__(), STALL_S)
                state.connected, state.error, state.trimmed = True, "", False
                state.peer_head = batch.head
                state.batches += 1
                state.last_batch_at = time.time()
                if batch.scanned_to > state.applied_to:
                    await self._apply(peer, state, batch)
        except StopAsyncIteration:
            return
        finally:
            call.cancel()

    @property
    def fences(self) -> Fences | None:
        return None if self.failover is None else self.failover.fences

    async def _apply(self, peer: str, state: PeerReplication, batch: rpb.LogBatch) -> None:
        """One batch of `peer`'s log, unless a takeover of `peer` fenced its log here
        (regions/fencing.py: a fence waits for the batch in flight)."""
        fences = self.fences
        if fences is None:
            await self._apply_batch(peer, state, batch)
            return
        async with fences.lock(peer):
            if fences.holds(peer):
                raise StorageError(f"region {peer}'s log is fenced here: a takeover of it"
                                   " is under way")
            await self._apply_batch(peer, state, batch)

    async def _apply_batch(self, peer: str, state: PeerReplication,
                           batch: rpb.LogBatch) -> None:
        entries = [LogEntry(e.lsn, e.epoch, from_pb(e.message), e.inbox_user, e.inbox_seq)
                   for e in batch.entries]
        recipients: dict[str, tuple[str, ...]] = {}  # 1:1 chats'; groups' come from storage
        seen: set[str] = set()
        stale: set[str] = set()
        stale_users = await self._stale_users(peer, [e for e in entries if e.inbox_user])
        for entry in entries:
            if entry.inbox_user:
                continue
            conversation_id = entry.message.conversation_id
            if conversation_id in seen:
                continue
            seen.add(conversation_id)
            if await self._lost_by(peer, CONVERSATION_HOME, conversation_id, entry.epoch):
                stale.add(conversation_id)
                continue
            if conversation_id.startswith("d:"):
                recipients[conversation_id] = await self._members(conversation_id, entry.message)
            elif is_relations_log(conversation_id):  # friend records: read by no client
                recipients[conversation_id] = ()
            elif user := events_user(conversation_id):
                # an event of a user the peer homes: stored here, its inbox entry follows
                await self.storage.ensure_events(user, entry.message.sent_at_ms)
                recipients[conversation_id] = ()
        if stale or stale_users:
            entries = [e for e in entries if not (e.inbox_user in stale_users if e.inbox_user
                                                  else e.message.conversation_id in stale)]
        messages = [e for e in entries if not e.inbox_user]
        changes = {e.lsn: change for e in messages
                   if (change := change_of(e.message)) is not None}
        # the recipients' homes settled first: this store writes the entries of the
        # users homed here, their homes' logs bring the others'
        users, groups = await self._recipients(messages, recipients, changes)
        try:
            await self.homes.users(users)
        except ProtocolError as exc:  # a home not settled (a peer silent): the batch again
            raise StorageError(f"inbox homes not settled: {exc.message}") from exc
        if len(self._settled_groups) + len(groups) > SETTLED_GROUPS:
            self._settled_groups.clear()
        self._settled_groups |= groups
        if self.social is not None:  # friends and reads first: idempotent if re-applied
            await self.social.apply([e.message for e in messages])
        blocked: LogBlocked | None = None
        try:
            items = await self.log.apply_log(peer, entries, batch.scanned_to, recipients,
                                             changes, self.large_above)
            applied_to = batch.scanned_to
        except LogBlocked as exc:  # stored up to a third region's message: the rest again
            blocked, items, applied_to = exc, exc.items, exc.applied_to
            entries = [e for e in entries if e.lsn <= applied_to]
            messages = [e for e in messages if e.lsn <= applied_to]
        state.applied_to = applied_to
        state.moved.set()
        state.entries += len(messages)
        state.inbox_entries += len(entries) - len(messages)
        if items:
            self.homes.committed()  # entries of users homed here: our log's readers want them
        if entries:
            await self.applied([e.message for e in messages], items)
        if blocked is not None:
            raise blocked  # the stream reopens from the cursor

    async def _stale_users(self, peer: str, entries: Sequence[LogEntry]) -> set[str]:
        """The users of a batch's inbox entries whose home this store holds at a higher
        epoch than the peer served them under (it lost the home: failover); the peer is
        told first, as for conversations. The others' rows are learnt."""
        stale: set[str] = set()
        seen: set[str] = set()
        for entry in entries:
            user = entry.inbox_user
            if user in seen:
                continue
            seen.add(user)
            if await self._lost_by(peer, USER_HOME, user, entry.epoch):
                stale.add(user)
        return stale

    async def _lost_by(self, peer: str, kind: str, key: str, epoch: int) -> bool:
        """Whether the peer served `key`'s entries under a home it no longer holds. The
        peer's row at the entry's epoch is learnt here (stored once: a write per batch
        would sit in every sync ack's path). A higher epoch held here means the peer
        lost this home (failover) and serves what it sequenced under the old one: it is
        told the new home before the cursor passes these entries (and Region.Applied
        confirms them), so it never acks them."""
        row = Home(peer, epoch, True)
        held = await self.homes.stored(kind, key)
        if held != row:
            held = await self.homes.learn(kind, key, row)
        if held.region == peer:
            return False
        await self.homes.correct(peer, kind, key, held)
        self.stale_skipped += 1
        return True

    async def _recipients(self, messages: Sequence[LogEntry],
                          direct: dict[str, tuple[str, ...]],
                          changes: dict[int, MembershipChange]) -> tuple[set[str], set[str]]:
        """Who may get an inbox entry from these messages: 1:1 chats' members, groups'
        members (a large group's: only those its changes add or remove) and the users
        the batch's changes add; and the groups whose members were read (once settled,
        a group's later members join by changes, which every batch looks at)."""
        users = {user for members in direct.values() for user in members}
        groups: set[str] = set()
        for entry in messages:
            conversation_id = entry.message.conversation_id
            change = changes.get(entry.lsn)
            if change is not None:
                users |= {user for user, _ in change.add} | set(change.remove)
            if (conversation_id in direct or conversation_id in groups
                    or conversation_id in self._settled_groups):
                continue
            groups.add(conversation_id)
            members = [m.user_id for m in await self.storage.members(conversation_id)]
            if self.large_above is None or len(members) <= self.large_above:
                users.update(members)
        return users, groups

    async def _members(self, conversation_id: str, message: StoredMessage) -> tuple[str, ...]:
        """The recipients here: the members of the 1:1 chat, created on its first entry."""
        conversation = await self.storage.conversation(conversation_id)
        if conversation is None:
            _, a, b = conversation_id.split(":", 2)
            conversation = await self.storage.ensure_direct(a, b, message.sent_at_ms)
        return conversation.members

    # -- what an SRE sees ------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        """Per peer: how its log is applied here and, under `confirmations`, how far it
        said it applied ours (what this region's sync acks wait on)."""
        now = time.time()
        durability = self.homes.durability
        mine = durability.report() if durability is not None else {}
        return {name: {**state.view(now), **({"confirmations": mine[name]} if name in mine else {})}
                for name, state in self.peers.items()}

    def log_report(self) -> dict[str, Any]:
        """This region's own log, for `/v1/peers` ("log")."""
        return {**({} if self.trimming is None else {"log": self.trimming.report()}),
                **({} if self.failover is None else self.failover.report())}

    def families(self) -> Iterator[Metric]:
        states = self.peers
        for kind, name, help_text, read in (
            ("gauge", "chatplane_region_replication_lag_entries",
             "the peer's log positions not applied here yet", lambda s: s.lag),
            ("gauge", "chatplane_region_replication_connected",
             "1 while the stream of the peer's log is open", lambda s: int(s.connected)),
            ("gauge", "chatplane_region_replication_last_batch_timestamp_seconds",
             "wall clock of the last batch (or heartbeat) from the peer",
             lambda s: s.last_batch_at or math.nan),
            ("counter", "chatplane_region_replication_applied_total",
             "the peer's messages applied here", lambda s: s.entries),
            ("counter", "chatplane_region_replication_inbox_applied_total",
             "inbox entries of the users the peer homes, applied here", lambda s: s.inbox_entries),
            ("gauge", "chatplane_region_replication_trimmed",
             "1 while the peer refuses our cursor: it trimmed its log past it (resync needed)",
             lambda s: int(s.trimmed)),
        ):
            yield metrics.labelled(kind, name, help_text, "peer",
                                   {peer: read(s) for peer, s in states.items()})
        yield from self.homes.families()
        if self.homes.durability is not None:
            yield from self.homes.durability.families()
        if self.trimming is not None:
            yield from self.trimming.families()
        if self.failover is not None:
            yield from self.failover.families()
        if self.social is not None:
            yield from self.social.families()
        yield metrics.counter("chatplane_region_stale_entries_skipped_total",
                              "conversations of a peer's batch not applied: the peer served"
                              " them under a home epoch it no longer holds",
                              self.stale_skipped)
