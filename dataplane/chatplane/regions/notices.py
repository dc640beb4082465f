"""Regions on CQL (docs/architecture.md, "Regions on CQL"): two datacenters of one
keyspace, where the database copies the rows and the link only says what a home
committed.

Home side (`NoticeLog`): after each message a region sequences as home, one notice
(conversation, seq range, epoch, and the recipients whose inbox entries it did not
write: the users another region homes) goes into an in-memory log, and each peer
follows it with `Region.Notify` from its cursor. Peer side (`NoticeFollower`): per
notice, the entries of the recipients this region homes are written here
(`Storage.fan_out`, which reads the message rows from this datacenter at the session's
read level and finds an entry written before, so a notice applied twice writes once);
a row Cassandra has not copied yet is read again, with backoff, for `READ_BOUND_S`,
then the stream is reopened from the cursor (never skipped). The new entries are
pushed to the devices connected here through the normal delivery path.

The log lives in memory, under a stream id drawn at start: a cursor of another stream
(the home restarted) or older than what is kept starts from the oldest notice kept,
and what was lost with the process is counted (`lost`), not recovered (not built).
A cluster per region keeps it in the region's Redis instead (im/sharednotices.py):
every im of the region adds to it and serves it, and the follower's cursor is kept
there too (`NoticeCursors`), so another im resumes it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.storage.base import InboxItem, StorageUnavailable, StoredMessage
from chatplane.supervision import Supervisor
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

KEEP = 100_000  # notices kept in memory for followers (about 100 bytes each)
BATCH = 256  # notices per NoticeBatch
HEARTBEAT_S = 1.0  # a caught-up stream says its head this often
SILENT_S = 3.0  # a follower reopens a stream silent this long (a cut link)
READ_BOUND_S = 10.0  # a row not readable here this long: reopen from the cursor
RECONNECT_S = 0.5

# the users among `users` whose inbox entries this region writes (their home is here)
UsersHere = Callable[[Sequence[str]], Awaitable[list[str]]]
# writes the entries of stored messages (conversation, [(seq, users)]): Storage.fan_out
FanOut = Callable[[str, Sequence[tuple[int, Sequence[str]]]], Awaitable[list[InboxItem]]]
# pushes stored messages and their new entries to this region's devices
Push = Callable[[Sequence[StoredMessage], Sequence[InboxItem]], Awaitable[None]]


class Notices(Protocol):
    """What this region committed as home, for its peers: `add` in commit order,
    `flushed` once what was added is kept (before the send is acked), `serve` for
    `Region.Notify`."""

    def add(self, conversation_id: str, epoch: int, first_seq: int, last_seq: int,
            recipients: Sequence[str]) -> None: ...

    async def flushed(self) -> None: ...

    def serve(self, request: rpb.NotifyRequest) -> AsyncIterator[rpb.NoticeBatch]: ...


class NoticeCursors(Protocol):
    """Where a follower keeps its cursor in each peer's notices (stream, position), so
    the im that takes the following over resumes it (a cluster: the region's Redis)."""

    async def load(self, peer: str) -> tuple[str, int]: ...

    async def save(self, peer: str, stream: str, position: int) -> None: ...


class NoticeLog:
    """What this region committed as home, for its peers (in memory, bounded)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.stream = uuid.uuid4().hex[:16]
        self.keep = keep
        self._notices: deque[rpb.Notice] = deque()
        self.head = 0
        self._changed = asyncio.Event()

    def add(self, conversation_id: str, epoch: int, first_seq: int, last_seq: int,
            recipients: Sequence[str]) -> None:
        self.head += 1
        self._notices.append(rpb.Notice(
            position=self.head, conversation_id=conversation_id, epoch=epoch,
            first_seq=first_seq, last_seq=last_seq, recipients=list(recipients)))
        while len(self._notices) > self.keep:
            self._notices.popleft()
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def flushed(self) -> None:
        """Kept as soon as added (in memory: lost with the process)."""

    @property
    def first(self) -> int:
        """The oldest position kept (head + 1 when none is)."""
        return self._notices[0].position if self._notices else self.head + 1

    def after(self, position: int, limit: int = BATCH) -> list[rpb.Notice]:
        start = max(0, position + 1 - self.first)
        return [self._notices[i] for i in range(start, min(len(self._notices), start + limit))]

    async def serve(self, request: rpb.NotifyRequest) -> AsyncIterator[rpb.NoticeBatch]:
        """`Region.Notify`: batches from the caller's cursor, a heartbeat when idle."""
        after = request.after if request.stream == self.stream else 0
        while True:
            notices = self.after(after)
            if notices:
                after = notices[-1].position
            else:
                changed = self._changed
                yield rpb.NoticeBatch(head=self.head, stream=self.stream, first=self.first)
                try:
                    await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
                except TimeoutError:
                    pass
                continue
            yield rpb.NoticeBatch(notices=notices, head=self.head, stream=self.stream,
                                  first=self.first)


@dataclass
class FollowedPeer:
    """This region's cursor in one peer's notices, and what it did with them."""

    name: str
    stream: str = ""
    applied_to: int = 0
    peer_head: int = 0
    connected: bool = False
    notices_applied: int = 0
    entries_written: int = 0
    rereads: int = 0  # rows not yet copied here when their notice arrived
    lost: int = 0  # notices the peer no longer had (it restarted, or trimmed)
    reconnects: int = 0
    last_batch_at: float | None = None
    error: str = ""

    @property
    def lag(self) -> int:
        return max(0, self.peer_head - self.applied_to)

    def view(self, now: float) -> dict[str, Any]:
        return {"mode": "notices", "stream": self.stream, "applied_to": self.applied_to,
                "peer_head": self.peer_head, "lag": self.lag, "connected": self.connected,
                "notices_applied": self.notices_applied, "entries_written": self.entries_written,
                "rereads": self.rereads, "lost": self.lost, "reconnects": self.reconnects,
                "last_batch_s_ago": (None if self.last_batch_at is None
                                     else round(now - self.last_batch_at, 3)),
                "error": self.error}


class NoticeFollower:
    """Follows every peer's notices: writes the entries of the users homed here, pushes."""

    def __init__(self, region: str, peers: Sequence[str],
                 channels: Callable[[str], grpc.aio.Channel], users_here: UsersHere,
                 fan_out: FanOut, push: Push, cursors: NoticeCursors | None = None) -> None:
        self.region = region
        self.cursors = cursors
        self.peers = {name: FollowedPeer(name) for name in peers}
        self.channels = channels
        self.users_here = users_here
        self.fan_out = fan_out
        self.push = push
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, supervisor: Supervisor) -> None:
        self._tasks = [supervisor.spawn(f"notices:{name}", functools.partial(self._follow, peer))
                       for name, peer in self.peers.items()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _follow(self, peer: FollowedPeer) -> None:
        loaded = self.cursors is None
        while True:
            try:
                if not loaded and self.cursors is not None:  # resume where the last one was
                    stream, position = await self.cursors.load(peer.name)
                    if stream and (stream != peer.stream or position > peer.applied_to):
                        peer.stream, peer.applied_to = stream, position
                    loaded = True
                await self._stream(peer)
            except (grpc.aio.AioRpcError, StorageUnavailable, TimeoutError, OSError) as exc:
                peer.error = (f"{exc.code().name}: {exc.details()}"
                              if isinstance(exc, grpc.aio.AioRpcError) else repr(exc))
            except Exception as exc:  # a dead loop would freeze the cursor silently
                log.exception("notices of %s", peer.name)
                peer.error = repr(exc)
            if peer.connected:
                log.warning("notices of %s cut (%s): reopening from %d", peer.name, peer.error,
                            peer.applied_to)
            peer.connected = False
            peer.reconnects += 1
            await asyncio.sleep(RECONNECT_S)

    async def _stream(self, peer: FollowedPeer) -> None:
        stub = rgrpc.RegionStub(self.channels(peer.name))
        call = stub.Notify(rpb.NotifyRequest(region=self.region, after=peer.applied_to,
                                             stream=peer.stream))
        try:
            while True:
                batch = await asyncio.wait_for(call.read(), SILENT_S)
                if batch is grpc.aio.EOF:
                    raise TimeoutError("stream ended")
                assert isinstance(batch, rpb.NoticeBatch)
                if batch.stream != peer.stream:  # a new stream: the peer restarted
                    if peer.stream:
                        log.warning("notices of %s: a new stream (it restarted); notices"
                                    " not delivered before are lost", peer.name)
                    peer.stream, peer.applied_to = batch.stream, 0
                if batch.first > peer.applied_to + 1:
                    peer.lost += batch.first - peer.applied_to - 1
                    peer.applied_to = batch.first - 1
                peer.connected, peer.error = True, ""
                peer.peer_head, peer.last_batch_at = batch.head, time.time()
                saved = peer.applied_to
                await self._apply(peer, batch.notices)
                if self.cursors is not None and (peer.applied_to != saved or not batch.notices):
                    await self.cursors.save(peer.name, peer.stream, peer.applied_to)
        finally:
            call.cancel()

    async def _apply(self, peer: FollowedPeer, notices: Sequence[rpb.Notice]) -> None:
        for notice in notices:
            if notice.position <= peer.applied_to:
                continue
            mine = await self.users_here(list(notice.recipients))
            if mine:
                entries = [(seq, mine) for seq in range(notice.first_seq, notice.last_seq + 1)]
                items = await self._written(peer, notice.conversation_id, entries)
                peer.entries_written += len(items)
                messages = list({item.message.seq: item.message for item in items}.values())
                await self.push(messages, items)
            peer.applied_to = notice.position
            peer.notices_applied += 1

    async def _written(self, peer: FollowedPeer, conversation_id: str,
                       entries: Sequence[tuple[int, Sequence[str]]]) -> list[InboxItem]:
        """The entries, written once the rows are readable here (Cassandra copies them
        on its own; a notice can overtake the copy), bounded by READ_BOUND_S."""
        deadline = time.monotonic() + READ_BOUND_S
        pause = 0.02
        while True:
            try:
                return await self.fan_out(conversation_id, entries)
            except StorageUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                peer.rereads += 1
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    # -- what an SRE sees ----------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {name: peer.view(now) for name, peer in self.peers.items()}

    def families(self) -> Iterator[Metric]:
        peers = list(self.peers.values())
        for kind, name, help_text, read in (
            ("gauge", "chatplane_region_replication_lag_entries",
             "notices of the peer not applied here yet", lambda p: p.lag),
            ("gauge", "chatplane_region_replication_connected",
             "1 while the peer's notice stream is open", lambda p: int(p.connected)),
            ("gauge", "chatplane_region_replication_last_batch_timestamp_seconds",
             "wall clock of the last batch from the peer (0: never)",
             lambda p: p.last_batch_at or 0),
            ("counter", "chatplane_region_replication_applied_total",
             "notices of the peer applied here", lambda p: p.notices_applied),
            ("counter", "chatplane_region_notice_entries_written_total",
             "inbox entries written here for the peer's messages", lambda p: p.entries_written),
            ("counter", "chatplane_region_notices_lost_total",
             "notices the peer no longer held (it restarted)", lambda p: p.lost),
        ):
            yield metrics.labelled(kind, name, help_text, "peer",
                                   {p.name: read(p) for p in peers})
