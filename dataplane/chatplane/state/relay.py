"""Large-group pushes in a cluster: state relays each paced flush to the gateways.

The im that stored a large group's message hands it, with the member list, to
the state instance that owns the conversation on the ring of state instances
(`State.DeliverGroup`), so one instance paces the group with the same
`GroupFanout` as `chatplane up` (state/groups.py): the relay is its sink.
Per flush, the frame is encoded once and each gateway gets one
`Gateway.GroupPush` with the users to write it to (the gateway's
`push_group`, the one `up` calls in process), found one of two ways:
- with few gateways (up to `broadcast_max_gateways`, 16), every gateway gets
  the whole member list and writes to the members connected there: a
  10,000-member list is ~150 KB and a few ms of a gateway's time, far less
  than reading 10,000 routes, and it needs no route (a Redis that lost them
  loses no group push);
- with more, the members' routes are read from Redis (one script call per
  `LOOKUP_BATCH` users, yielding between calls) and each gateway gets only
  its users, so the bytes sent do not grow with the number of gateways.
The flush's CPU here (not the time waiting for Redis or gateways) paces the
group, as the slices of `up`'s fan-out do.

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

from chatplane.registry.instances import CachedInstances
from chatplane.routes.base import Routes
from chatplane.rpc.peers import Peers
from chatplane.slicing import TimeSlice
from chatplane.state.groups import GroupFanout
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

log = logging.getLogger("chatplane.state.relay")
LOOKUP_BATCH = 1000  # users per route-reading script call
BROADCAST_MAX_GATEWAYS = 16  # up to this many gateways, each gets the whole member list


class GroupRelay(GroupFanout):
    def __init__(self, routes: Routes, gateways: CachedInstances, peers: Peers, *,
                 interval_ms: float = 100, max_messages: int = 200, max_share: float = 1.0,
                 broadcast_max_gateways: int = BROADCAST_MAX_GATEWAYS) -> None:
        super().__init__(self, interval_ms=interval_ms, max_messages=max_messages,
                         max_share=max_share)
        self.routes = routes
        self.gateways = gateways
        self.peers = peers
        self.broadcast_max_gateways = broadcast_max_gateways
        self.flushes = 0
        self.lost_flushes = 0  # routes unreadable: left to the head check
        self.failed_pushes = 0  # GroupPush calls to a gateway that failed

    async def _users_by_gateway(self, members: Sequence[str],
                                clock: TimeSlice) -> dict[str, list[str]]:
        by_gateway: dict[str, list[str]] = defaultdict(list)
        for start in range(0, len(members), LOOKUP_BATCH):
            found = await clock.wait(
                self.routes.users_by_gateway(members[start:start + LOOKUP_BATCH]))
            for gateway_id, users in found.items():
                by_gateway[gateway_id] += users
        return by_gateway

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        """The sink of this instance's `GroupFanout`: one `GroupPush` per
        gateway; returns the device pushes the gateways made."""
        clock = clock or TimeSlice()
        self.flushes += 1
        try:
            live = await clock.wait(self.gateways.get())
            if len(live) <= self.broadcast_max_gateways:
                everyone = list(user_ids)  # shared, read only
                by_gateway = {gateway_id: everyone for gateway_id in live}
            else:
                by_gateway = await self._users_by_gateway(user_ids, clock)
                if any(g not in live for g in by_gateway):
                    self.gateways.invalidate()  # a gateway that just started: read again once
                    live = await clock.wait(self.gateways.get())
        except (RedisError, OSError) as exc:
            self.lost_flushes += 1
            log.warning("group %s: registry unreadable, flush up to %d left to the head check: %s",
                        conversation_id, head_seq, exc)
            return 0
        pushed = await clock.wait(asyncio.gather(*(
            self._push(gateway_id, live.get(gateway_id, {}).get("grpc", ""), spb.GroupPushRequest(
                conversation_id=conversation_id, head_seq=head_seq, frame=payload, user_ids=users))
            for gateway_id, users in by_gateway.items())))
        return sum(pushed)

    async def _push(self, gateway_id: str, address: str, request: spb.GroupPushRequest) -> int:
        if not address:
            self.failed_pushes += 1  # its TTL passed: dead or partitioned
            return 0
        try:
            reply = await self.peers.stub(address, "gateway", sgrpc.GatewayStub).GroupPush(
                request, timeout=self.peers.deadline_s)
        except grpc.aio.AioRpcError as exc:
            self.failed_pushes += 1
            log.warning("group push to gateway %s failed: %s", gateway_id, exc.code().name)
            return 0
        return int(reply.pushed)
