"""The state tier seen from its callers (gateways and im instances).

`StateLinks` finds state instances (the static `CHATPLANE_STATE_ADDRS`, else
the Redis registry) and makes a call on the first that answers.

`DeliveryOutbox` is what an im instance hands sequenced inbox entries to
(`deliver`, the same call as the in-process `StateService.deliver`). It sends
them to state in batches, one batch in flight, in the order they were
stored, and retries a batch on another instance until one accepts it or
`give_up_s` passes. The batches go on one long-lived stream per state
instance (`State.DeliverStream`, rpc/streams.py; `Deliver` for an instance
of an earlier version), failing as the unary call would: delivery im -> state -> gateway is at least once (the
gateway drops what it already pushed). What is given up (state and Redis
both down for long) still reaches clients: the gateway's head check sees the
inbox head move past what it pushed and sends the device a `SyncHint`.

`RemoteRegistry` is what a gateway tells state about its devices (the
gateway's `Registry`): `register` completes before the login is answered;
`unregister` is queued and sent in batches; `refresh` re-asserts every route
(periodically, and at once after Redis lost them).

`GroupOutbox` does the same for large groups (read diffusion: no inbox
entries): `deliver_group` queues a group's message with its member list,
and each round sends every queued group, its messages in seq order with one
member list, to the state instance that owns the conversation on the hash
ring of state instances (so one instance paces a group). What cannot be
delivered is caught by the gateway's head check of large groups.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from chatplane import tracing
from chatplane.protocol import wire
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.registry.instances import CachedInstances, LiveRing
from chatplane.registry.mirror import RoutedLink
from chatplane.rpc import convert
from chatplane.rpc.batching import Coalescer
from chatplane.rpc.peers import Peers, first_answer
from chatplane.rpc.streams import Streams
from chatplane.storage.base import InboxItem, StoredMessage
from chatplane.supervision import Supervisor
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

T = TypeVar("T")
log = logging.getLogger("chatplane.state.client")
# Links keep a monotonic open time; routes compare wall clocks across
# gateways, so add this process's offset (fixed once: stable per connection).
WALL_OFFSET_MS = time.time() * 1000 - time.monotonic() * 1000


# A gateway's connection as a route: the device it serves, since when (its
# open time on this process's monotonic clock).
Link = RoutedLink


class StateLinks:
    def __init__(self, peers: Peers, static: list[str], registry: CachedInstances | None) -> None:
        self.peers = peers
        self.static = static
        self.registry = registry
        self.ring = LiveRing(static, registry)
        self.delivers: Streams[spb.DeliverRequest, spb.DeliverReply, sgrpc.StateStub] = Streams(
            peers, "state", "State.Deliver", sgrpc.StateStub,
            lambda stub: stub.DeliverStream, lambda stub: stub.Deliver)

    async def owners(self, key: str) -> list[str]:
        """Addresses in ring order from the owner of `key`."""
        return [address for _, address in await self.ring.owners(key)]

    async def addresses(self) -> list[str]:
        if self.static:
            found = list(self.static)
        elif self.registry is not None:
            found = [f["grpc"] for f in (await self.registry.get()).values() if f.get("grpc")]
        else:
            found = []
        random.shuffle(found)  # spread the load; any instance serves any call
        return found

    async def call(self, fn: Callable[[sgrpc.StateStub], Awaitable[T]], total_s: float) -> T:
        return await self.call_at(lambda address: fn(self.stub(address)), total_s)

    def stub(self, address: str) -> sgrpc.StateStub:
        return self.peers.stub(address, "state", sgrpc.StateStub)

    async def call_at(self, fn: Callable[[str], Awaitable[T]], total_s: float) -> T:
        """`fn(address)` on the first instance that answers."""
        addresses = await self.addresses()
        if not addresses and self.registry is not None:
            self.registry.invalidate()
            addresses = await self.addresses()
        return await first_answer(addresses, fn, total_s)

    async def call_keyed(self, key: str, fn: Callable[[str], Awaitable[T]],
                         total_s: float) -> T:
        """`fn(address)` on the owner of `key`, and the next ones on the ring if it fails."""
        return await first_answer(await self.owners(key), fn, total_s)

    async def call_until(self, fn: Callable[[str], Awaitable[T]], give_up_s: float,
                         key: str | None = None) -> tuple[int, Exception | None]:
        """An outbox's at-least-once call: retried on gRPC failures until one
        attempt succeeds or `give_up_s` passes (to the owner of `key` and the
        next ones on the ring, or to any instance). Returns how many attempts
        were made and the error it gave up on (None: delivered)."""
        attempts = 0

        async def counted(address: str) -> T:
            nonlocal attempts
            attempts += 1
            return await fn(address)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_s
        while True:
            # each round reads the instances again: a state pod that came
            # back elsewhere is found, not only the ones known at the start
            total_s = min(deadline - loop.time(), 4 * self.peers.deadline_s)
            try:
                if key is None:
                    await self.call_at(counted, total_s)
                else:
                    await self.call_keyed(key, counted, total_s)
                return attempts, None
            except Exception as exc:  # never let an outbox die: heads catch up by sync
                if loop.time() < deadline and isinstance(exc, grpc.aio.AioRpcError):
                    if self.registry is not None:
                        self.registry.invalidate()
                    await asyncio.sleep(0.1)
                    continue
                return attempts, exc


class DeliveryOutbox:
    def __init__(self, links: StateLinks, *, max_batch: int = 1024, give_up_s: float = 30.0) -> None:
        self.links = links
        self.max_batch = max_batch
        self.give_up_s = give_up_s
        self._queue: deque[InboxItem] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.retried = 0
        self.given_up = 0
        self.groups = GroupOutbox(links, give_up_s=give_up_s)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def deliver_group(self, conversation_id: str, members: Sequence[str],
                      message: StoredMessage) -> None:
        """A large group's message, for its online members (no inbox entries)."""
        self.groups.deliver_group(conversation_id, members, message)

    def deliver(self, items: Iterable[InboxItem]) -> int:
        before = len(self._queue)
        self._queue.extend(items)
        self._wake.set()
        return len(self._queue) - before

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.spawn("im-delivery-outbox", self._run)
        self.groups.start(supervisor)

    async def stop(self, flush_s: float = 2.0) -> None:
        """Give what is queued `flush_s` to leave, then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_s
        while self._queue and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.groups.stop(max(0.0, deadline - loop.time()))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.links.delivers.close()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft()
                         for _ in range(min(self.max_batch, len(self._queue)))]
                await self._send(batch)

    async def _send(self, batch: list[InboxItem]) -> None:
        request = spb.DeliverRequest(deliveries=convert.deliveries(batch))

        async def deliver(address: str) -> spb.DeliverReply:
            with tracing.span("im.deliver", entries=len(batch)):
                return await self.links.delivers.call(address, request,
                                                      self.links.peers.deadline_s)

        attempts, error = await self.links.call_until(deliver, self.give_up_s)
        if error is None:
            self.sent += len(batch)
        else:
            self.given_up += len(batch)
            log.error("gave up delivering %d entries after %d attempts: %s",
                      len(batch), attempts, error)
        self.retried += max(0, attempts - 1)


@dataclass
class _Pending:
    members: Sequence[str]
    messages: list[StoredMessage] = field(default_factory=list)


class GroupOutbox:
    def __init__(self, links: StateLinks, *, max_messages: int = 500,
                 give_up_s: float = 30.0) -> None:
        self.links = links
        self.max_messages = max_messages  # per group and request; the rest waits a round
        self.give_up_s = give_up_s
        self._queue: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.retried = 0
        self.given_up = 0

    @property
    def depth(self) -> int:
        return sum(len(p.messages) for p in self._queue.values())

    def deliver_group(self, conversation_id: str, members: Sequence[str],
                      message: StoredMessage) -> None:
        pending = self._queue.get(conversation_id)
        if pending is None:
            pending = self._queue[conversation_id] = _Pending(members)
        pending.members = members  # the latest list: membership changes go with their event
        pending.messages.append(message)
        self._wake.set()

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.spawn("im-group-outbox", self._run)

    async def stop(self, flush_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_s
        while self._queue and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _take(self) -> dict[str, _Pending]:
        """Up to `max_messages` of each queued group, in seq order."""
        taken: dict[str, _Pending] = {}
        for conversation_id, pending in list(self._queue.items()):
            pending.messages.sort(key=lambda m: m.seq)  # appends may finish out of order
            head = pending.messages[:self.max_messages]
            taken[conversation_id] = _Pending(pending.members, head)
            del pending.messages[:len(head)]
            if not pending.messages:
                del self._queue[conversation_id]
        return taken

    async def _run(self) -> None:
        # one round in flight: a group's next messages leave after the
        # previous ones were accepted, so each group's order holds
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await asyncio.gather(*(self._send(c, p) for c, p in self._take().items()))

    async def _send(self, conversation_id: str, pending: _Pending) -> None:
        request = spb.DeliverGroupRequest(groups=[spb.GroupDelivery(
            conversation_id=conversation_id, members=list(pending.members),
            messages=[wire.message(m) for m in pending.messages])])

        async def deliver(address: str) -> spb.DeliverGroupReply:
            with tracing.span("im.deliver_group", messages=len(pending.messages)):
                reply: spb.DeliverGroupReply = await self.links.stub(address).DeliverGroup(
                    request, timeout=self.links.peers.deadline_s)
            return reply

        # a group that gives up is repaired by the gateways' head check
        attempts, error = await self.links.call_until(deliver, self.give_up_s, key=conversation_id)
        if error is None:
            self.sent += len(pending.messages)
        else:
            self.given_up += len(pending.messages)
            log.error("gave up delivering %d messages of %s after %d attempts: %s",
                      len(pending.messages), conversation_id, attempts, error)
        self.retried += max(0, attempts - 1)


def opened_wall_ms(conn: Link) -> int:
    return int(conn.opened_ms + WALL_OFFSET_MS)


def _route(gateway_id: str, conn: Link) -> spb.Route:
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

    async def register(self, link: Link) -> None:
        """Routes of logins arriving together go in one call. A route a newer
        connection of the device holds is refused, and state kicks this one."""
        try:
            await self._register.get((link.user_id, link.device_id, link.conn_id,
                                      opened_wall_ms(link)))
        except grpc.aio.AioRpcError as exc:
            self.failures += 1
            raise ProtocolError(ErrorCode.UNAVAILABLE,
                                f"state unavailable: {exc.code().name}") from exc

    def unregister(self, link: Link) -> None:
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

    async def refresh(self, conns: Sequence[Link]) -> None:
        for start in range(0, len(conns), 1000):
            request = spb.RegisterRequest(refresh=True, routes=[
                _route(self.gateway_id, c) for c in conns[start:start + 1000] if c.user_id])
            await self._call_state("Register", request)

    async def _call_state(self, method: str, request: object) -> object:
        async def call(stub: sgrpc.StateStub) -> object:
            return await getattr(stub, method)(request, timeout=self.links.peers.deadline_s)

        return await self.links.call(call, 2 * self.links.peers.deadline_s)
