"""The state tier's gRPC service: routes, presence, and downlink routing.

State keeps no connection state in its own memory: routes live in Redis
(`routes/redis.py`), so any state instance serves any request, and one that
is killed costs nothing but the calls in flight — their callers retry on
another instance (every call here is idempotent).

Deliver: look up the routes of the entries' users, group the entries by the
gateway holding their devices, push to each gateway with a deadline. A
gateway that does not answer is counted `unreachable`: its clients resume
through dispatch and sync. When Redis cannot be read the call fails
UNAVAILABLE, and the im's outbox retries it.

Deliver comes as batches on one long-lived stream per im instance
(`DeliverStream`, rpc/streams.py) or as a unary call (an im of an earlier
version), and its pushes go the same way to each gateway (`push`, the
gateway tier's client: gateway/client.py).

DeliverGroup: a large group's messages (read diffusion), queued for the
group's paced fan-out to the gateways (`GroupRelay`, state/relay.py); the
call returns once they are queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from chatplane import tracing
from chatplane.metrics import Histogram, Readings
from chatplane.registry.instances import CachedInstances
from chatplane.routes import base as routing
from chatplane.routes.base import RouteEntry, Routes
from chatplane.rpc import convert, streams
from chatplane.rpc.peers import Peers
from chatplane.state.relay import GroupRelay
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

log = logging.getLogger("chatplane.state")


def _entries(routes: list[spb.Route]) -> list[RouteEntry]:
    return [RouteEntry(r.user_id, r.device_id, r.gateway_id, r.conn_id, r.opened_ms)
            for r in routes]


# A Push to the gateway at an address, within a deadline (gateway/client.py).
Pusher = Callable[[str, spb.PushRequest, float], Awaitable[spb.PushReply]]


class StateServicer(sgrpc.StateServicer):
    def __init__(self, routes: Routes, gateways: CachedInstances, peers: Peers, push: Pusher, *,
                 group_interval_ms: float = 100, group_max_messages: int = 200) -> None:
        self.routes = routes
        self.gateways = gateways
        self.peers = peers
        self.push = push
        self.groups = GroupRelay(routes, gateways, peers, interval_ms=group_interval_ms,
                                 max_messages=group_max_messages)
        self.metrics = Readings()
        self.pushed = 0
        self.metrics.counter("chatplane_pushed_total", "inbox entries pushed to devices",
                             lambda: self.pushed)
        self.deliver_latency = Histogram("chatplane_state_deliver_seconds",
                                         "Deliver: routes lookup and gateway pushes")
        self.unreachable = 0
        self.redis_errors = 0
        self.metrics.counter("chatplane_state_unreachable_total",
                             "device pushes whose gateway did not answer", lambda: self.unreachable)
        self.metrics.counter("chatplane_state_redis_errors_total", "failed Redis calls",
                             lambda: self.redis_errors)
        self.group_messages = 0
        self.metrics.counter("chatplane_state_group_messages_total",
                             "large-group messages accepted for fan-out", lambda: self.group_messages)
        self.metrics.counter("chatplane_state_group_flushes_total", "large-group flushes relayed",
                             lambda: self.groups.flushes)
        self.metrics.counter("chatplane_state_group_pushes_total",
                             "large-group device pushes gateways accepted",
                             lambda: self.groups.frames_pushed)
        self.metrics.counter("chatplane_state_group_failed_pushes_total",
                             "large-group GroupPush calls to a gateway that failed",
                             lambda: self.groups.failed_pushes)

    async def _redis_failed(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        self.redis_errors += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"route store unavailable: {exc}")

    async def Register(self, request: spb.RegisterRequest,
                       context: grpc.aio.ServicerContext) -> spb.RegisterReply:
        with tracing.serving("state.Register"):
            entries = _entries(list(request.routes))
            try:
                if request.refresh:
                    await self.routes.refresh(entries)
                    return spb.RegisterReply()
                kicked = await self.routes.register(entries)
            except (RedisError, OSError) as exc:
                await self._redis_failed(context, exc)
                raise
            # the replaced older connections, and logins refused because a
            # newer connection of the device holds the route
            old = [k for k, e in zip(kicked, entries, strict=True) if k is not None and k != e]
            refused = [k for k, e in zip(kicked, entries, strict=True) if k == e]
            if old:
                await self._kick(old, routing.REPLACED)
            if refused:
                await self._kick(refused, routing.REFUSED)
            return spb.RegisterReply()

    async def Unregister(self, request: spb.UnregisterRequest,
                         context: grpc.aio.ServicerContext) -> spb.UnregisterReply:
        with tracing.serving("state.Unregister"):
            try:
                await self.routes.unregister(_entries(list(request.routes)))
            except (RedisError, OSError) as exc:
                await self._redis_failed(context, exc)
                raise
            return spb.UnregisterReply()

    async def Presence(self, request: spb.PresenceRequest,
                       context: grpc.aio.ServicerContext) -> spb.PresenceReply:
        try:
            found = await self.routes.lookup(list(request.user_ids))
        except (RedisError, OSError) as exc:
            await self._redis_failed(context, exc)
            raise
        return spb.PresenceReply(devices={u: len(r) for u, r in found.items()})

    async def Deliver(self, request: spb.DeliverRequest,
                      context: grpc.aio.ServicerContext) -> spb.DeliverReply:
        return await streams.answer_unary(context, self._deliver, request)

    async def DeliverStream(self, requests: AsyncIterator[spb.DeliverRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[spb.DeliverReply]:
        """Deliver's batches on one stream per im instance (rpc/streams.py)."""
        async with streams.serving(requests, context, self._deliver, spb.DeliverReply) as answers:
            async for answer in answers:
                yield answer

    async def _deliver(self, request: spb.DeliverRequest) -> spb.DeliverReply:
        with tracing.serving("state.Deliver"):
            started = asyncio.get_running_loop().time()
            by_user: dict[str, list[spb.Delivery]] = defaultdict(list)
            for d in request.deliveries:
                by_user[d.user_id].append(d)
            try:
                found = await self.routes.lookup(list(by_user))
            except (RedisError, OSError) as exc:
                self.redis_errors += 1
                raise streams.BatchFailed(grpc.StatusCode.UNAVAILABLE,
                                          f"route store unavailable: {exc}") from exc
            per_gateway: dict[str, spb.PushRequest] = defaultdict(spb.PushRequest)
            for uid, routes in found.items():
                for gateway_id in {r.gateway_id for r in routes}:
                    per_gateway[gateway_id].deliveries.extend(by_user[uid])
            addresses = await self._addresses(per_gateway)
            results = await asyncio.gather(*(
                self._push(gateway_id, addresses.get(gateway_id, ""), push)
                for gateway_id, push in per_gateway.items()))
            pushed = sum(n for n, _ in results)
            unreachable = sum(u for _, u in results)
            self.unreachable += unreachable
            self.pushed += pushed
            self.deliver_latency.observe(asyncio.get_running_loop().time() - started)
            return spb.DeliverReply(pushed=pushed, unreachable=unreachable)

    async def DeliverGroup(self, request: spb.DeliverGroupRequest,
                           context: grpc.aio.ServicerContext) -> spb.DeliverGroupReply:
        with tracing.serving("state.DeliverGroup"):
            accepted = 0
            for group in request.groups:
                members = list(group.members)
                for m in group.messages:
                    self.groups.offer(group.conversation_id, members, convert.message(m))
                    accepted += 1
            self.group_messages += accepted
            return spb.DeliverGroupReply(accepted=accepted)

    async def _addresses(self, gateway_ids: dict[str, spb.PushRequest]) -> dict[str, str]:
        live = await self.gateways.get()
        if any(g not in live for g in gateway_ids):
            self.gateways.invalidate()  # a gateway that just started: read again once
            live = await self.gateways.get()
        return {g: live[g].get("grpc", "") for g in gateway_ids if g in live}

    async def _push(self, gateway_id: str, address: str,
                    push: spb.PushRequest) -> tuple[int, int]:
        if not address:
            return 0, len(push.deliveries)  # its TTL passed: dead or partitioned
        try:
            reply = await self.push(address, push, self.peers.deadline_s)
        except grpc.aio.AioRpcError as exc:
            log.warning("push to gateway %s failed: %s", gateway_id, exc.code().name)
            return 0, len(push.deliveries)
        return reply.pushed, 0

    async def _kick(self, routes: list[RouteEntry], reason: str) -> None:
        live = await self.gateways.get()
        by_gateway: dict[str, list[RouteEntry]] = defaultdict(list)
        for r in routes:
            by_gateway[r.gateway_id].append(r)
        for gateway_id, entries in by_gateway.items():
            address = live.get(gateway_id, {}).get("grpc", "")
            if not address:
                continue
            request = spb.KickRequest(reason=reason, routes=[
                spb.Route(user_id=r.user_id, device_id=r.device_id, gateway_id=r.gateway_id,
                          conn_id=r.conn_id) for r in entries])
            try:
                await self.peers.stub(address, "gateway", sgrpc.GatewayStub).Kick(
                    request, timeout=self.peers.deadline_s)
            except grpc.aio.AioRpcError as exc:
                log.warning("kick on gateway %s failed: %s", gateway_id, exc.code().name)

    def families(self) -> Iterator[Metric]:
        yield from self.metrics.families()
        yield self.deliver_latency.family()
        yield from self.groups.families()
