"""Large-group pushes in a cluster: state relays each paced flush to the gateways.

The im that stored a large group's message hands it, with the member list, to
the state instance that owns the conversation on the ring of state instances
(`State.DeliverGroup`), so one instance paces the group with the same
`GroupFanout` rules as `chatplane up` (state/groups.py). Per flush, that
instance reads the members' routes from Redis (pipelined, `LOOKUP_BATCH` users
a call, yielding between calls), and sends each gateway holding some of them
one `Gateway.GroupPush`: the frame, encoded once, and the users there. The
flush's time includes the lookups and the pushes, so a group whose fan-out is
slow batches more instead of taking more of the process.

A flush that is lost (this instance killed with it queued, Redis unreadable,
a gateway push failing) is not retried here: the gateway's head check of
large groups sees a device that was never told of the group's head and sends
it a `SyncHint` (gateway/heads.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence

import grpc
from redis.exceptions import RedisError

from chatplane import tracing
from chatplane.registry.instances import CachedInstances
from chatplane.registry.routes import Routes
from chatplane.rpc.peers import Peers
from chatplane.state.groups import GroupFanout
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

log = logging.getLogger("chatplane.state.relay")
LOOKUP_BATCH = 1000  # routes read per Redis pipeline


class GroupRelay(GroupFanout):
    def __init__(self, routes: Routes, gateways: CachedInstances, peers: Peers, *,
                 interval_ms: float = 100, max_messages: int = 200) -> None:
        super().__init__(lambda user: (), interval_ms=interval_ms, max_messages=max_messages)
        self.routes = routes
        self.gateways = gateways
        self.peers = peers
        self.flushes = 0
        self.lost_flushes = 0  # Redis unreadable: left to the head check
        self.unreachable = 0  # device pushes whose gateway did not answer

    async def _users_by_gateway(self, members: Sequence[str]) -> dict[str, list[str]]:
        by_gateway: dict[str, list[str]] = defaultdict(list)
        for start in range(0, len(members), LOOKUP_BATCH):
            found = await self.routes.lookup(members[start:start + LOOKUP_BATCH])
            for user, routes in found.items():
                for gateway_id in {r.gateway_id for r in routes}:
                    by_gateway[gateway_id].append(user)
        return by_gateway

    async def _fan(self, conversation_id: str, head_seq: int, payload: bytes,
                   members: Sequence[str]) -> None:
        self.flushes += 1
        try:
            by_gateway = await self._users_by_gateway(members)
        except (RedisError, OSError) as exc:
            self.lost_flushes += 1
            log.warning("group %s: routes unreadable, flush up to %d left to the head check: %s",
                        conversation_id, head_seq, exc)
            return
        live = await self.gateways.get()
        if any(g not in live for g in by_gateway):
            self.gateways.invalidate()  # a gateway that just started: read again once
            live = await self.gateways.get()
        await asyncio.gather(*(
            self._push(gateway_id, live.get(gateway_id, {}).get("grpc", ""), spb.GroupPushRequest(
                conversation_id=conversation_id, head_seq=head_seq, frame=payload, user_ids=users))
            for gateway_id, users in by_gateway.items()))

    async def _push(self, gateway_id: str, address: str, request: spb.GroupPushRequest) -> None:
        if not address:
            self.unreachable += len(request.user_ids)  # its TTL passed: dead or partitioned
            return
        try:
            reply = await sgrpc.GatewayStub(self.peers.channel(address)).GroupPush(
                request, timeout=self.peers.deadline_s, metadata=tracing.outgoing())
        except grpc.aio.AioRpcError as exc:
            self.unreachable += len(request.user_ids)
            log.warning("group push to gateway %s failed: %s", gateway_id, exc.code().name)
            return
        self.frames_pushed += reply.pushed
