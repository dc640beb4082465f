"""What state asks of the gateway over gRPC (`GatewayServicer`).

`Push` hands inbox entries to the devices of their users connected here
(each connection's downlink window drops what it already pushed, so a
retried Push is harmless); `GroupPush` writes one large-group frame to the
devices of the users it lists (a repeat is dropped by the client, by seq);
`Kick` closes a connection another login replaced. The gateway's own calls
to the other tiers are their clients: im/client.py and state/client.py;
state's pushes come through gateway/client.py, mostly on `PushStream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from chatplane import tracing
from chatplane.rpc import convert, streams
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

if TYPE_CHECKING:
    from chatplane.gateway.service import Gateway


class GatewayServicer(sgrpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Push(self, request: spb.PushRequest,
                   context: grpc.aio.ServicerContext) -> spb.PushReply:
        return await self._push(request)

    async def PushStream(self, requests: AsyncIterator[spb.PushRequest],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[spb.PushReply]:
        """Push's batches on one stream per state instance (rpc/streams.py)."""
        async with streams.serving(requests, context, self._push, spb.PushReply) as answers:
            async for answer in answers:
                yield answer

    async def _push(self, request: spb.PushRequest) -> spb.PushReply:
        with tracing.serving("gateway.Push"):
            items = [convert.inbox_item(d) for d in request.deliveries]
            return spb.PushReply(pushed=self.gateway.push_entries(items))

    async def GroupPush(self, request: spb.GroupPushRequest,
                        context: grpc.aio.ServicerContext) -> spb.GroupPushReply:
        with tracing.serving("gateway.GroupPush"):
            pushed = await self.gateway.push_group(request.conversation_id, request.head_seq,
                                                   request.frame, list(request.user_ids))
            return spb.GroupPushReply(pushed=pushed)

    async def Kick(self, request: spb.KickRequest,
                   context: grpc.aio.ServicerContext) -> spb.KickReply:
        kicked = sum(self.gateway.kick_route(r.user_id, r.device_id, r.conn_id, request.reason)
                     for r in request.routes)
        return spb.KickReply(kicked=kicked)
