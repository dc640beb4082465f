"""Server side shared by the tiers: the gRPC server, the HTTP probe endpoints,
and the loop that keeps an instance published in the Redis registry.

Every tier serves `/healthz` (the process runs) and `/readyz` (it can do its
job: its dependencies answered recently; a draining gateway is not ready) on
its HTTP port and its admin port, and `/metrics` (Prometheus text) on its
admin port only (rpc/adminport.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from chatplane import metrics
from chatplane.protocol import bounds
from chatplane.registry.instances import Instances
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.settings import Settings
from chatplane.supervision import Supervisor

log = logging.getLogger("chatplane.rpc")


def advertised_host(settings: Settings) -> str:
    """The host peers dial to reach this instance: CHATPLANE_GRPC_ADVERTISE_HOST
    (a pod sets it to its IP), else the listen host, else (listening on every
    interface) this machine's address."""
    host = settings.links.grpc_advertise_host or settings.server.host
    if host in ("", "0.0.0.0", "::"):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return host


def reachable_host(bound_host: str, settings: Settings) -> str:
    """What to advertise for a socket bound to `bound_host`: itself, unless it is a wildcard
    (0.0.0.0 in a pod), which no client can dial; then advertised_host()."""
    return advertised_host(settings) if bound_host in ("", "0.0.0.0", "::") else bound_host


async def start_grpc(host: str, port: int, register: Callable[[grpc.aio.Server], None],
                     security: LinkSecurity) -> tuple[grpc.aio.Server, int]:
    """The gRPC server of a tier: mTLS or not per `security`, every call gated by
    the caller table (rpc/callers.py)."""
    gate = security.gate()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                      ("grpc.max_receive_message_length", 16 * 1024 * 1024)],
                             interceptors=[gate])
    register(server)
    creds = security.server_credentials(gate)
    bound = (server.add_secure_port(f"{host}:{port}", creds) if creds is not None
             else server.add_insecure_port(f"{host}:{port}"))
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound


def probe_routes(ready: Callable[[], bool],
                 detail: Callable[[], Mapping[str, object]] | None = None) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok = ready()
        body: dict[str, object] = {"ready": ok, **(detail() if detail else {})}
        return web.json_response(body, status=200 if ok else 503)

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def metrics_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    """`/metrics` of `registry` (metrics.registry()): for the admin port only."""
    async def metrics_handler(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(registry, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [web.get("/metrics", metrics_handler)]


async def start_http(app: web.Application, host: str, port: int,
                     ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])


class Publisher:
    """Keeps one instance published (every third of the TTL). `on_lost` runs
    when Redis had lost the instance's key (a restart without persistence),
    so the caller republishes whatever else it keeps there. `healthy` is
    False while Redis does not answer."""

    def __init__(self, instances: Instances, kind: str, instance_id: str,
                 fields: Callable[[], Mapping[str, str | int | float]],
                 on_lost: Callable[[], Awaitable[None]] | None = None) -> None:
        self.instances = instances
        self.kind = kind
        self.instance_id = instance_id
        self.fields = fields
        self.on_lost = on_lost
        self.healthy = False
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def publish_now(self) -> None:
        try:
            existed = await self.instances.publish(self.kind, self.instance_id, self.fields())
        except (RedisError, OSError) as exc:
            if self.healthy:
                log.warning("registry publish failed: %s", exc)
            self.healthy = False
            self.failures += 1
            return
        was_healthy, self.healthy = self.healthy, True
        if (not existed or not was_healthy) and self.on_lost is not None:
            try:
                await self.on_lost()
            except (RedisError, OSError, grpc.aio.AioRpcError) as exc:
                log.warning("republish after registry loss failed: %s", exc)
                self.healthy = False

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.spawn("registry-heartbeat", self._run)

    async def begin(self, supervisor: Supervisor) -> Publisher:
        """Publish at once, then keep publishing; returns self."""
        await self.publish_now()
        self.start(supervisor)
        return self

    def poke(self) -> None:
        """Publish now (e.g. the draining flag changed)."""
        self._wake.set()

    async def _run(self) -> None:
        period = self.instances.ttl_ms / 3000
        while True:
            await self.publish_now()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), period)
            except TimeoutError:
                pass

    async def stop(self, remove: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if remove:
            try:
                await self.instances.remove(self.kind, self.instance_id)
            except (RedisError, OSError):
                pass


async def refuse_out_of_bounds(context: grpc.aio.ServicerContext, call: str,
                               request: object, also: str | None = None) -> None:
    """Abort a call whose fields are out of bounds (protocol/bounds.py) with
    INVALID_ARGUMENT; `also`: another problem found by the caller's own check."""
    problem = bounds.call_problem(call, request) or also
    if problem is not None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
