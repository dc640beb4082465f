"""The im tier seen from a gateway: `RemoteIm`, the gateway's `ImApi` when im
runs as its own tier (gRPC).

A request goes to the im instance that owns its key on the hash ring (the
conversation for sends, history and group changes, else the user), and on a
retriable failure to the next one on the ring: ownership moves with the
first failed call, before the dead instance's registry TTL passes. The
request frame is forwarded as bytes; a device's sends into one conversation
go in one ordered call (`handle_sends`, gateway/uplink.py).

A gRPC call costs far more CPU than the send it carries (docs/benchmarks.md,
"`cluster up`: CPU per message per tier"), and a gateway has a lane per
device and conversation, so the lanes bound for one im instance share calls
(`Im.HandleSendLanes`): up to `LANE_CALLS` calls in flight per instance, and
the lanes that come meanwhile wait for one of them to return and go
together. An idle gateway's lane goes at once, alone. A lane the call could
not handle (its instance does not own the conversation, or the call failed
retriably) goes again alone to the next instance on the ring, within the
same deadline, as after a failed `HandleSends`; an instance without
`HandleSendLanes` (an earlier version, during a rollout) gets `HandleSends`.
The calls go as batches on one long-lived stream per instance
(`Im.HandleSendLanesStream`, rpc/streams.py), which fail as the unary call
would; an instance without the stream gets `HandleSendLanes`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from chatplane.protocol.bounds import MAX_LANES_PER_CALL
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.wire import error_frame
from chatplane.registry.instances import CachedInstances, LiveRing
from chatplane.registry.ring import ring_key
from chatplane.rpc.batching import Coalescer, SharedCalls
from chatplane.rpc.peers import Peers, first_answer, retriable
from chatplane.rpc.streams import Streams
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

T = TypeVar("T")
# Routed to the conversation's owner: the requests that append to, or read
# what the owner caches of, the one conversation they name. The others go to
# the user's owner, which also owns the user's event conversation.
BY_CONVERSATION = frozenset({"send", "history", "group_op", "members", "receipts"})
LANE_CALLS = 2  # HandleSendLanes calls in flight per im instance; more lanes wait and go together
LANE_CALL_BYTES = 1024 * 1024  # sends' bytes in one call (gRPC's default limit is 4 MiB)
log = logging.getLogger("chatplane.im.client")


class RemoteIm:
    def __init__(self, peers: Peers, static: list[str], registry: CachedInstances | None) -> None:
        self.peers = peers
        self.static = static
        self.registry = registry
        self.ring = LiveRing(static, registry)
        self.failovers = 0
        self.store_id = ""  # learnt from the heads replies (a login asks for its head first)
        self.on_failover: Callable[[], None] | None = None
        self._heads: Coalescer[str, int] = Coalescer(self.inbox_heads)  # logins in a storm
        self._lanes: SharedCalls[spb.ClientRequests, spb.ClientReplies] = SharedCalls(
            self._send_lanes, spb.ClientRequests.ByteSize, in_flight=LANE_CALLS,
            max_batch=MAX_LANES_PER_CALL, max_bytes=LANE_CALL_BYTES)
        self._no_lanes: set[str] = set()  # instances that answered UNIMPLEMENTED
        self.lane_streams: Streams[spb.SendLanes, spb.SendLanesReply, sgrpc.ImStub] = Streams(
            peers, "im", "Im.HandleSendLanes", sgrpc.ImStub,
            lambda stub: stub.HandleSendLanesStream, lambda stub: stub.HandleSendLanes)

    async def _owners(self, key: str) -> list[str]:
        return [address for _, address in await self.ring.owners(key)]

    async def _call(self, key: str, invoke: Callable[[sgrpc.ImStub], Awaitable[T]], *,
                    owner_failed: bool = False, total_s: float | None = None) -> T:
        """`invoke` on the owner of `key`, or on the next ones on the ring
        after a retriable failure (each move counted as a failover);
        `owner_failed`: the owner already failed this request (a shared
        call), so start with the next one."""
        owners = await self._owners(key)  # (an empty registry is read again once)
        tried = 0
        if owner_failed and len(owners) > 1:
            owners = owners[1:] + owners[:1]
            tried = 1

        async def one(address: str) -> T:
            nonlocal tried
            tried += 1
            if tried > 1:
                self.failovers += 1
                if self.on_failover is not None:
                    self.on_failover()
            return await invoke(self.peers.stub(address, "im", sgrpc.ImStub))

        return await first_answer(owners, one, 2 * self.peers.deadline_s if total_s is None
                                  else total_s)

    async def handle(self, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
        kind = frame.WhichOneof("body") or ""
        key = (ring_key(getattr(frame, kind).conversation_id) if kind in BY_CONVERSATION
               else user_id)
        request = spb.ClientRequest(user_id=user_id, device_id=device_id,
                                    frame=frame.SerializeToString())
        try:
            reply: spb.ClientReply = await self._call(key, lambda stub: stub.Handle(
                request, timeout=self.peers.deadline_s))
        except grpc.aio.AioRpcError as exc:
            code = ErrorCode.UNAVAILABLE if retriable(exc) else ErrorCode.INTERNAL
            return error_frame(frame.id, code, f"im unavailable, retry: {exc.code().name}")
        return pb.Frame.FromString(reply.frame)

    async def handle_sends(self, user_id: str, device_id: str,
                           frames: Sequence[pb.Frame]) -> list[pb.Frame]:
        """One device's sends into one conversation, in cid order, in one call
        to the conversation's owner (or, after a retriable failure, the whole
        batch to the next one: what the first stored is answered there with
        its original ack). A failed call answers every send UNAVAILABLE."""
        conversation_id = frames[0].send.conversation_id
        request = spb.ClientRequests(user_id=user_id, device_id=device_id,
                                     frames=[f.SerializeToString() for f in frames])
        key = ring_key(conversation_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        owners = await self._owners(key)
        owner_failed = False
        if owners and owners[0] not in self._no_lanes:
            shared = await self._queue_lane(owners[0], request)
            if shared is not None:
                return self._replies(frames, shared)
            owner_failed = owners[0] not in self._no_lanes  # (else: it has no HandleSendLanes)
        try:
            reply: spb.ClientReplies = await self._call(
                key, lambda stub: stub.HandleSends(request, timeout=self.peers.deadline_s),
                owner_failed=owner_failed,
                total_s=max(0.0, 2 * self.peers.deadline_s - (loop.time() - started)))
        except grpc.aio.AioRpcError as exc:
            code = ErrorCode.UNAVAILABLE if retriable(exc) else ErrorCode.INTERNAL
            return [error_frame(f.id, code, f"im unavailable, retry: {exc.code().name}")
                    for f in frames]
        return self._replies(frames, reply)

    @staticmethod
    def _replies(frames: Sequence[pb.Frame], reply: spb.ClientReplies) -> list[pb.Frame]:
        if len(reply.frames) != len(frames):
            return [error_frame(f.id, ErrorCode.INTERNAL, "im answered another number of sends")
                    for f in frames]
        return [pb.Frame.FromString(r) for r in reply.frames]

    async def _queue_lane(self, address: str,
                          lane: spb.ClientRequests) -> spb.ClientReplies | None:
        """`lane` in a HandleSendLanes call to `address`, with the lanes
        queued for it meanwhile; None when that call did not handle it."""
        try:  # (waiting for a call and the call: one deadline, as HandleSends')
            reply = await asyncio.wait_for(self._lanes.ask(address, lane), self.peers.deadline_s)
        except TimeoutError:
            return None
        except grpc.aio.AioRpcError as exc:  # it goes again alone
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._no_lanes.add(address)
            return None
        except Exception:  # a bug must cost one more call, not the lane
            log.exception("HandleSendLanes to %s failed", address)
            return None
        return None if reply.not_handled else reply

    async def _send_lanes(self, address: str,
                          lanes: list[spb.ClientRequests]) -> list[spb.ClientReplies]:
        reply = await self.lane_streams.call(address, spb.SendLanes(lanes=lanes),
                                             self.peers.deadline_s)
        return list(reply.lanes)

    async def _read(self, key: str, call: Callable[[sgrpc.ImStub], Awaitable[T]]) -> T:
        """A read-only call on the owner of `key`, or the next ones on the ring."""
        async def one(address: str) -> T:
            return await call(self.peers.stub(address, "im", sgrpc.ImStub))

        return await first_answer(await self._owners(key), one, 2 * self.peers.deadline_s)

    @property
    def lane_calls(self) -> int:
        """HandleSendLanes calls made."""
        return self._lanes.calls

    async def inbox_heads(self, user_ids: Sequence[str]) -> dict[str, int]:
        if not user_ids:
            return {}
        request = spb.InboxHeadsRequest(user_ids=list(user_ids))
        reply: spb.InboxHeadsReply = await self._read(user_ids[0], lambda stub: stub.InboxHeads(
            request, timeout=self.peers.deadline_s))
        if reply.store_id:
            self.store_id = reply.store_id  # every im answers for the same storage
        return dict(reply.heads)

    async def group_heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        """The heads of large groups (any im reads them from storage)."""
        if not conversation_ids:
            return {}
        request = spb.GroupHeadsRequest(conversation_ids=list(conversation_ids))
        reply: spb.GroupHeadsReply = await self._read(conversation_ids[0], lambda stub: stub.GroupHeads(
            request, timeout=self.peers.deadline_s))
        return dict(reply.heads)

    async def inbox_head(self, user_id: str) -> int:
        try:
            return await self._heads.get(user_id)
        except grpc.aio.AioRpcError as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"im unavailable: {exc.code().name}") from exc
