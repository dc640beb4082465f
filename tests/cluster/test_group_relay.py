"""The state tier's large-group relay against the real things: routes and the
gateway registry in a real Redis, gRPC to two real gateway servers (which
record what they are asked). With few gateways each gets the whole member
list; with more, each gets only the members that have a route there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
import redis.asyncio as aioredis

from chatplane.registry.instances import CachedInstances, Instances
from chatplane.routes.base import RouteEntry
from chatplane.routes.redis import RedisRoutes
from chatplane.rpc import serving
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from chatplane.state.relay import GroupRelay
from chatplane.storage.base import StoredMessage
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

pytestmark = pytest.mark.redis


class RecordingGateway(sgrpc.GatewayServicer):
    def __init__(self) -> None:
        self.pushes: list[spb.GroupPushRequest] = []

    async def GroupPush(self, request: spb.GroupPushRequest,
                        context: grpc.aio.ServicerContext) -> spb.GroupPushReply:
        self.pushes.append(request)
        return spb.GroupPushReply(pushed=len(request.user_ids))


def _serving(recorder: RecordingGateway) -> Callable[[grpc.aio.Server], None]:
    return lambda server: sgrpc.add_GatewayServicer_to_server(recorder, server)


def _message(seq: int) -> StoredMessage:
    return StoredMessage(conversation_id="g:big", seq=seq, message_id=f"m{seq}", sender="u0",
                         sender_device="phone", cid=seq, text=f"hello {seq}", sent_at_ms=1)


@pytest.mark.parametrize("broadcast_max_gateways", [0, 16])
async def test_each_gateway_gets_the_flush_for_its_members(
        client: aioredis.Redis, broadcast_max_gateways: int) -> None:
    instances = Instances(client, ttl_s=30)
    gateways = {name: RecordingGateway() for name in ("gw-1", "gw-2")}
    servers = []
    for name, recorder in gateways.items():
        server, port = await serving.start_grpc("127.0.0.1", 0, _serving(recorder),
                                                  LinkSecurity("gateway", secret="s"))
        servers.append(server)
        await instances.publish("gateway", name, {"grpc": f"127.0.0.1:{port}"})
    members = [f"u{i}" for i in range(2500)]  # more than one route-reading batch
    online = {"gw-1": set(members[:1000]) | {"u1500"}, "gw-2": set(members[1000:1501])}
    routes = RedisRoutes(client)
    for name, users in online.items():
        await routes.register([RouteEntry(u, "tablet" if name == "gw-2" else "phone", name,
                                           f"c-{u}", 1) for u in sorted(users)])
    peers = Peers(2.0, LinkSecurity("state", secret="s"))
    relay = GroupRelay(routes, CachedInstances(instances, "gateway"), peers,
                       broadcast_max_gateways=broadcast_max_gateways)
    try:
        relay.offer("g:big", members, _message(7))
        for _ in range(100):
            if all(r.pushes for r in gateways.values()):
                break
            await asyncio.sleep(0.05)
        for name, recorder in gateways.items():
            [push] = recorder.pushes
            assert push.conversation_id == "g:big" and push.head_seq == 7
            frame = pb.Frame.FromString(push.frame)
            assert [m.seq for m in frame.group_push.messages] == [7]
            want = set(members) if broadcast_max_gateways else online[name]
            assert set(push.user_ids) == want
        assert relay.flushes == 1 and relay.failed_pushes == 0
    finally:
        for server in servers:
            await server.stop(None)
        await peers.close()
