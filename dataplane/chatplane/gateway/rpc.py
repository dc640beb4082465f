"""The gateway's gRPC service: what the state tier asks of it.

`Push` hands inbox entries to the devices of their users connected here (the
downlink window of each connection drops what it already pushed, so a retried
Push is harmless); `Kick` closes a connection another login replaced.
"""

from __future__ import annotations

import grpc

from chatplane import tracing
from chatplane.gateway.service import Gateway
from chatplane.rpc import convert
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc


class GatewayServicer(sgrpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Push(self, request: spb.PushRequest,
                   context: grpc.aio.ServicerContext) -> spb.PushReply:
        with tracing.serving("gateway.Push", context.invocation_metadata()):
            items = [convert.inbox_item(d) for d in request.deliveries]
            return spb.PushReply(pushed=self.gateway.push_entries(items))

    async def Kick(self, request: spb.KickRequest,
                   context: grpc.aio.ServicerContext) -> spb.KickReply:
        kicked = sum(self.gateway.kick_route(r.user_id, r.device_id, r.conn_id, request.reason)
                     for r in request.routes)
        return spb.KickReply(kicked=kicked)
