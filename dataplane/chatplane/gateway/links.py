"""The gateway's links to the other tiers over gRPC.

`RemoteIm` is the `ImApi` of a separate im tier. A request goes to the im
instance that owns its key on the hash ring (the conversation for sends,
history and group changes, else the user), and on a retriable failure to the next one on the
ring: ownership moves with the first failed call, before the dead instance's
registry TTL passes. The request frame is forwarded as bytes.

`RemoteRegistry` is the `Registry` of a separate state tier: `register`
completes before the login is answered; `unregister` is queued and sent in
batches; `refresh` re-asserts every route (periodically, and at once after
Redis lost them).

`GatewayServicer` is the other direction, what state asks of the gateway:
`Push` hands inbox entries to the devices of their users connected here
(each connection's downlink window drops what it already pushed, so a
retried Push is harmless); `GroupPush` writes one large-group frame to the
devices of the users it lists (a repeat is dropped by the client, by seq);
`Kick` closes a connection another login replaced.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc

from chatplane import tracing
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.wire import error_frame
from chatplane.registry.instances import CachedInstances, LiveRing
from chatplane.registry.ring import ring_key
from chatplane.rpc import convert
from chatplane.rpc.batching import Coalescer
from chatplane.rpc.peers import Peers, first_answer, retriable
from chatplane.state.links import StateLinks
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

if TYPE_CHECKING:
    from chatplane.gateway.connection import Connection
    from chatplane.gateway.service import Gateway

log = logging.getLogger("chatplane.gateway.links")
T = TypeVar("T")
# Connections keep a monotonic open time; routes compare wall clocks across
# gateways, so add this process's offset (fixed once: stable per connection).
WALL_OFFSET_MS = time.time() * 1000 - time.monotonic() * 1000
# Routed to the conversation's owner: the requests that append to, or read
# what the owner caches of, the one conversation they name. The others go to
# the user's owner, which also owns the user's event conversation.
BY_CONVERSATION = frozenset({"send", "history", "group_op", "members", "receipts"})


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

    async def _owners(self, key: str) -> list[str]:
        return [address for _, address in await self.ring.owners(key)]

    async def _call(self, key: str, invoke: Callable[[sgrpc.ImStub], Awaitable[T]]) -> T:
        """`invoke` on the owner of `key`, or on the next ones on the ring
        after a retriable failure (each move counted as a failover)."""
        owners = await self._owners(key)  # (an empty registry is read again once)
        tried = 0

        async def one(address: str) -> T:
            nonlocal tried
            tried += 1
            if tried > 1:
                self.failovers += 1
                if self.on_failover is not None:
                    self.on_failover()
            return await invoke(sgrpc.ImStub(self.peers.channel(address, "im")))

        return await first_answer(owners, one, 2 * self.peers.deadline_s)

    async def handle(self, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
        kind = frame.WhichOneof("body") or ""
        key = (ring_key(getattr(frame, kind).conversation_id) if kind in BY_CONVERSATION
               else user_id)
        request = spb.ClientRequest(user_id=user_id, device_id=device_id,
                                    frame=frame.SerializeToString())
        with tracing.span("gateway.request", kind=kind):
            try:
                reply: spb.ClientReply = await self._call(key, lambda stub: stub.Handle(
                    request, timeout=self.peers.deadline_s, metadata=tracing.outgoing()))
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
        with tracing.span("gateway.sends", count=len(frames)):
            try:
                reply: spb.ClientReplies = await self._call(
                    ring_key(conversation_id), lambda stub: stub.HandleSends(
                        request, timeout=self.peers.deadline_s, metadata=tracing.outgoing()))
            except grpc.aio.AioRpcError as exc:
                code = ErrorCode.UNAVAILABLE if retriable(exc) else ErrorCode.INTERNAL
                return [error_frame(f.id, code, f"im unavailable, retry: {exc.code().name}")
                        for f in frames]
        if len(reply.frames) != len(frames):
            return [error_frame(f.id, ErrorCode.INTERNAL, "im answered another number of sends")
                    for f in frames]
        return [pb.Frame.FromString(r) for r in reply.frames]

    async def _read(self, key: str, call: Callable[[sgrpc.ImStub], Awaitable[T]]) -> T:
        """A read-only call on the owner of `key`, or the next ones on the ring."""
        async def one(address: str) -> T:
            return await call(sgrpc.ImStub(self.peers.channel(address, "im")))

        return await first_answer(await self._owners(key), one, 2 * self.peers.deadline_s)

    async def inbox_heads(self, user_ids: Sequence[str]) -> dict[str, int]:
        if not user_ids:
            return {}
        request = spb.InboxHeadsRequest(user_ids=list(user_ids))
        reply: spb.InboxHeadsReply = await self._read(user_ids[0], lambda stub: stub.InboxHeads(
            request, timeout=self.peers.deadline_s, metadata=tracing.outgoing()))
        if reply.store_id:
            self.store_id = reply.store_id  # every im answers for the same storage
        return dict(reply.heads)

    async def group_heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        """The heads of large groups (any im reads them from storage)."""
        if not conversation_ids:
            return {}
        request = spb.GroupHeadsRequest(conversation_ids=list(conversation_ids))
        reply: spb.GroupHeadsReply = await self._read(conversation_ids[0], lambda stub: stub.GroupHeads(
            request, timeout=self.peers.deadline_s, metadata=tracing.outgoing()))
        return dict(reply.heads)

    async def inbox_head(self, user_id: str) -> int:
        try:
            return await self._heads.get(user_id)
        except grpc.aio.AioRpcError as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"im unavailable: {exc.code().name}") from exc


def opened_wall_ms(conn: Connection) -> int:
    return int(conn.opened_ms + WALL_OFFSET_MS)


def _route(gateway_id: str, conn: Connection) -> spb.Route:
    return spb.Route(user_id=conn.user_id, device_id=conn.device_id, gateway_id=gateway_id,
                     conn_id=conn.conn_id, opened_ms=opened_wall_ms(conn))


class RemoteRegistry:
    def __init__(self, links: StateLinks, gateway_id: str) -> None:
        self.links = links
        self.gateway_id = gateway_id
        self._gone: list[spb.Route] = []
        self._flush: asyncio.Task[None] | None = None
        self.failures = 0
        self._register: Coalescer[tuple[str, str, str, int], bool] = Coalescer(
            self._register_batch)

    async def _register_batch(self, keys: Sequence[tuple[str, str, str, int]]) -> dict[
            tuple[str, str, str, int], bool]:
        request = spb.RegisterRequest(routes=[
            spb.Route(user_id=u, device_id=d, gateway_id=self.gateway_id, conn_id=c, opened_ms=o)
            for u, d, c, o in keys])
        await self._call_state("Register", request)
        return dict.fromkeys(keys, True)

    async def register(self, link: Connection) -> None:
        """Routes of logins arriving together go in one call. A route a newer
        connection of the device holds is refused, and state kicks this one."""
        try:
            await self._register.get((link.user_id, link.device_id, link.conn_id,
                                      opened_wall_ms(link)))
        except grpc.aio.AioRpcError as exc:
            self.failures += 1
            raise ProtocolError(ErrorCode.UNAVAILABLE,
                                f"state unavailable: {exc.code().name}") from exc

    def unregister(self, link: Connection) -> None:
        self._gone.append(_route(self.gateway_id, link))
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._send_gone())

    async def _send_gone(self) -> None:
        await asyncio.sleep(0.05)  # gather a batch (a drain closes many at once)
        while self._gone:
            batch, self._gone = self._gone[:1000], self._gone[1000:]
            try:
                await self._call_state("Unregister", spb.UnregisterRequest(routes=batch))
            except grpc.aio.AioRpcError as exc:  # the routes expire by their TTL
                self.failures += 1
                log.warning("unregister of %d routes failed: %s", len(batch), exc.code().name)

    async def refresh(self, conns: Sequence[Connection]) -> None:
        for start in range(0, len(conns), 1000):
            request = spb.RegisterRequest(refresh=True, routes=[
                _route(self.gateway_id, c) for c in conns[start:start + 1000] if c.user_id])
            await self._call_state("Register", request)

    async def _call_state(self, method: str, request: object) -> object:
        async def call(stub: sgrpc.StateStub) -> object:
            return await getattr(stub, method)(request, timeout=self.links.peers.deadline_s,
                                               metadata=tracing.outgoing())

        return await self.links.call(call, 2 * self.links.peers.deadline_s)


class GatewayServicer(sgrpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Push(self, request: spb.PushRequest,
                   context: grpc.aio.ServicerContext) -> spb.PushReply:
        with tracing.serving("gateway.Push", context.invocation_metadata()):
            items = [convert.inbox_item(d) for d in request.deliveries]
            return spb.PushReply(pushed=self.gateway.push_entries(items))

    async def GroupPush(self, request: spb.GroupPushRequest,
                        context: grpc.aio.ServicerContext) -> spb.GroupPushReply:
        with tracing.serving("gateway.GroupPush", context.invocation_metadata()):
            pushed = await self.gateway.push_group(request.conversation_id, request.head_seq,
                                                   request.frame, list(request.user_ids))
            return spb.GroupPushReply(pushed=pushed)

    async def Kick(self, request: spb.KickRequest,
                   context: grpc.aio.ServicerContext) -> spb.KickReply:
        kicked = sum(self.gateway.kick_route(r.user_id, r.device_id, r.conn_id, request.reason)
                     for r in request.routes)
        return spb.KickReply(kicked=kicked)
