"""The im tier seen from a gateway: `RemoteIm`, the gateway's `ImApi` when im
runs as its own tier (gRPC).

A request goes to the im instance that owns its key on the hash ring (the
conversation for sends, history and group changes, else the user), and on a
retriable failure to the next one on the ring: ownership moves with the
first failed call, before the dead instance's registry TTL passes. The
request frame is forwarded as bytes; a device's sends into one conversation
go in one ordered call (`handle_sends`, gateway/uplink.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.wire import error_frame
from chatplane.registry.instances import CachedInstances, LiveRing
from chatplane.registry.ring import ring_key
from chatplane.rpc.batching import Coalescer
from chatplane.rpc.peers import Peers, first_answer, retriable
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

T = TypeVar("T")
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
        try:
            reply: spb.ClientReplies = await self._call(
                ring_key(conversation_id), lambda stub: stub.HandleSends(
                    request, timeout=self.peers.deadline_s))
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
