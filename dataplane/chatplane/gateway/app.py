"""`chatplane gateway`: the gateway tier as its own process.

Client connections on HTTP (`/ws`) and raw TCP; the `Gateway` gRPC service
for the state tier; its entry `cp:gateway:<id>` in Redis (addresses, live
connections, CPU load, draining), which ipconf ranks and state routes by.

The public HTTP port serves `/ws` and health; the admin port (rpc/adminport.py)
`/metrics`, `/admin/drain` and health. Token revocations come from Redis
(`cp:revocations`, written by the im tier) every half `session_check_s`.

Drain (`POST /admin/drain` with the admin secret, or SIGTERM): readiness turns false and the
registry entry says draining at once (dispatch stops listing it), clients get
`Reconnect` at the drain rate with jitter, and the process exits when empty
or at the deadline. With `drain.exit_when_empty=0` (the operator's pods) a drained gateway
stays, empty and not ready, until SIGTERM: the kubelet sends it once the preStop hook
(`chatplane drain --wait`) has returned, and the hook must not outlive its container.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from chatplane import certs, metrics, revocations
from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner, read_or_create_secret
from chatplane.gateway import admission, drainapi, webapp
from chatplane.gateway.bulk import BulkWriter
from chatplane.gateway.heads import HeadChecker
from chatplane.gateway.links import GatewayServicer
from chatplane.gateway.service import Gateway
from chatplane.gateway.transports import GATEWAY, TcpFrameProtocol, websocket_handler
from chatplane.im.client import RemoteIm
from chatplane.registry import instances as registry
from chatplane.routes.base import ROUTE_REFRESH_S
from chatplane.rpc import serving
from chatplane.rpc.adminport import AuditLog, start_admin
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers, parse_addrs
from chatplane.settings import Settings
from chatplane.state.client import RemoteRegistry, StateLinks
from chatplane.supervision import Supervisor
from chatplane.v1 import services_pb2_grpc as sgrpc


class CpuLoad:
    """This process's CPU use since the last reading, 0..1 of one core."""

    def __init__(self) -> None:
        self._at = (time.monotonic(), time.process_time())
        self.value = 0.0

    def read(self) -> float:
        now = (time.monotonic(), time.process_time())
        wall, cpu = now[0] - self._at[0], now[1] - self._at[1]
        if wall > 0.5:
            self.value, self._at = min(1.0, cpu / wall), now
        return self.value


def registry_fields(gateway: Gateway, cpu: CpuLoad, *, ws: str, tcp: str, grpc_address: str,
                    http: str) -> dict[str, str | int | float]:
    """A gateway's entry `cp:gateway:<id>`, what dispatch ranks by (the
    gateway tier's, and `chatplane up`'s when it has a Redis URL)."""
    return {"ws": ws, "tcp": tcp, "grpc": grpc_address, "http": http,
            "connections": len(gateway.connections), "load": round(cpu.read(), 3),
            "draining": int(gateway.draining)}


class GatewayApp:
    kind = "gateway"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        server, links = settings.server, settings.links
        if not settings.storage.redis_url:
            raise ValueError("the gateway tier needs CHATPLANE_REDIS_URL")
        data_dir = Path(settings.storage.data_dir)
        signer = TokenSigner.configured(settings)
        self.audit = AuditLog.configured(settings)
        self.admin_secret = server.admin_secret or read_or_create_secret(data_dir / ADMIN_SECRET_FILE)
        self.instance_id = server.server_id or f"gw-{socket.gethostname()}"
        self.redis = registry.connect(settings.storage.redis_url, timeout_s=links.rpc_deadline_s / 2,
                                      tls=settings.tls)
        self.instances = registry.Instances(self.redis, links.registry_ttl_s)
        self.security = LinkSecurity.from_settings(settings, "gateway")
        self.peers = Peers(links.rpc_deadline_s, self.security)
        self.im = RemoteIm(self.peers, parse_addrs(links.im_addrs),
                           registry.CachedInstances(self.instances, "im", 1.0))
        self.routes = RemoteRegistry(StateLinks(
            self.peers, parse_addrs(links.state_addrs),
            registry.CachedInstances(self.instances, "state", 1.0)), self.instance_id)
        self.gateway = Gateway(settings, self.im, self.routes, signer, self.instance_id)
        self.gateway.group_writer = BulkWriter.create()
        self.heads = HeadChecker(self.gateway, self.im.inbox_heads, links.head_check_s,
                                 self.im.group_heads)
        self.im.on_failover = self.heads.check_soon
        self.revocation_watcher = revocations.RevocationWatcher(
            self.gateway.revocations, lambda: revocations.read_redis(self.redis),
            settings.tokens.session_check_s / 2, self.gateway.apply_revocations)
        self.admin_url = ""
        self._admin_runner: web.AppRunner | None = None
        self.cpu = CpuLoad()
        self.ws_url = self.tcp_address = self.grpc_address = self.base_url = ""
        self.publisher: serving.Publisher | None = None
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._http: asyncio.AbstractServer | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()  # set when a drain has emptied the gateway
        self._may_exit = asyncio.Event()  # set: exit once drained (SIGTERM sets it too)
        if settings.drain.exit_when_empty:
            self._may_exit.set()
        self.supervisor = Supervisor(settings.supervision)
        self.certs: certs.ReloadingCert | None = None

    def _fields(self) -> dict[str, str | int | float]:
        return registry_fields(self.gateway, self.cpu, ws=self.ws_url, tcp=self.tcp_address,
                               grpc_address=self.grpc_address, http=self.base_url)

    def _ready(self) -> bool:
        return (self.publisher is not None and self.publisher.healthy
                and not self.gateway.draining and self.supervisor.ready())

    def _detail(self) -> dict[str, object]:
        return {"draining": self.gateway.draining, **self.supervisor.details()}

    def _families(self) -> Iterator[Metric]:
        """What only a cluster gateway counts (its calls to im and state)."""
        yield metrics.counter("chatplane_head_check_hints_total",
                              "SyncHints sent by the head check", self.heads.hints)
        yield metrics.counter("chatplane_head_check_group_hints_total",
                              "SyncHints sent for a large group's head", self.heads.group_hints)
        yield metrics.counter("chatplane_im_failovers_total", "requests retried on another im",
                              self.im.failovers)
        yield metrics.counter("chatplane_im_send_lane_calls_total",
                              "Im.HandleSendLanes calls (each carries the lanes queued meanwhile)",
                              self.im.lane_calls)
        yield from self.im.lane_streams.families("chatplane_im_send_lane")
        yield metrics.counter("chatplane_route_failures_total", "failed route calls to state",
                              self.routes.failures)

    def metrics_registry(self) -> CollectorRegistry:
        """What /metrics shows (once the certificate is loaded, in start())."""
        return metrics.registry(self._families, self.gateway.metrics.families,
                                certs.families_of(self.certs), self.supervisor.families)

    async def _lost_routes(self) -> None:
        """Redis lost its keys (or was unreachable): put our routes back, then
        look for pushes that found no route meanwhile."""
        await self.routes.refresh([c for c in self.gateway.connections if c.user_id])
        self.heads.check_soon()

    async def _refresh_routes(self) -> None:
        while True:
            await asyncio.sleep(ROUTE_REFRESH_S)
            try:
                await self.routes.refresh([c for c in self.gateway.connections if c.user_id])
            except grpc.aio.AioRpcError:
                pass  # next round; the publisher's loss detection covers Redis restarts

    async def _drain_handler(self, request: web.Request) -> web.Response:
        asked = await drainapi.drain_request(request, self.admin_secret, self.settings.drain,
                                             self.audit)
        if isinstance(asked, web.Response):
            return asked
        self.drain(*asked)
        return web.json_response(self.gateway.drain_status(), status=202)

    async def _drain_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.gateway.drain_status())

    def drain(self, rate: float | None = None, deadline_s: float | None = None) -> None:
        """Start the paced drain; `finished` is set when it is over."""
        if self.gateway.draining:
            return
        self.gateway.drain(rate or self.settings.drain.rate,
                           deadline_s or self.settings.drain.deadline_s, self._announce_drain)

        async def exit_when_empty() -> None:
            await self.gateway.wait_drained()
            await self._may_exit.wait()
            self.finished.set()

        asyncio.get_running_loop().create_task(exit_when_empty())

    async def _announce_drain(self) -> None:
        """Publish the draining flag now and wait until every ipconf has read it. A client
        sent away earlier is handed this gateway again (it looks least loaded as it
        empties), is refused, backs off and logs in later on top of the paced ones: the
        busiest second went to twice the drain rate on a real node."""
        if self.publisher is not None:
            await self.publisher.publish_now()
        await asyncio.sleep(registry.DISPATCH_MAX_AGE_S)

    def terminate(self) -> None:
        """SIGTERM: drain (unless draining already), then exit once empty."""
        self._may_exit.set()
        self.drain()

    async def start(self) -> None:
        server, links = self.settings.server, self.settings.links
        host = serving.advertised_host(self.settings)
        self._grpc, grpc_port = await serving.start_grpc(
            server.host, links.grpc_port,
            lambda s: sgrpc.add_GatewayServicer_to_server(GatewayServicer(self.gateway), s),
            self.security)
        self.grpc_address = f"{host}:{grpc_port}"
        await self.revocation_watcher.start(self.supervisor)  # before any login is taken
        app = web.Application(client_max_size=1024 * 1024)
        app[GATEWAY] = self.gateway
        app.add_routes([web.get("/ws", websocket_handler),
                        *serving.probe_routes(self._ready, self._detail)])
        app.add_routes(webapp.routes())  # the web app at / (no dev login on a cluster)
        self.certs = certs.from_settings(self.settings.tls.cert, self.settings.tls.key)
        tls = self.certs.context if self.certs is not None else None
        self._runner, self._http, http_port = await admission.start_public_http(
            app, server.host, server.http_port, self.gateway.admission, self.settings.abuse,
            ssl_context=tls)
        self.base_url = f"{'https' if tls else 'http'}://{host}:{http_port}"
        # the admin port is plain HTTP: cluster-internal (NetworkPolicy), behind the admin secret
        admin = web.Application(client_max_size=1024 * 1024)
        admin.add_routes([web.post("/admin/drain", self._drain_handler),
                          web.get("/admin/drain", self._drain_status),
                          *serving.probe_routes(self._ready, self._detail),
                          *serving.metrics_routes(self.metrics_registry())])
        self._admin_runner, admin_port = await start_admin(admin, self.settings)
        self.admin_url = f"http://{host}:{admin_port}"
        self.ws_url = server.advertise_url or f"{'wss' if tls else 'ws'}://{host}:{http_port}/ws"
        if server.tcp_port:
            self._tcp = await asyncio.get_running_loop().create_server(
                lambda: TcpFrameProtocol(self.gateway), server.host, server.tcp_port, ssl=tls,
                ssl_handshake_timeout=self.settings.abuse.header_timeout_s if tls else None,
                backlog=admission.LISTEN_BACKLOG)
            tcp_host, tcp_port = self._tcp.sockets[0].getsockname()[:2]
            public = server.advertise_tcp or (
                f"{serving.reachable_host(tcp_host, self.settings)}:{tcp_port}")
            self.tcp_address = f"{'tcps://' if tls else ''}{public}"
        self.gateway.start(self.supervisor)
        self.heads.start(self.supervisor)
        self.publisher = serving.Publisher(self.instances, self.kind, self.instance_id,
                                           self._fields, on_lost=self._lost_routes)
        await self.publisher.begin(self.supervisor)
        self._refresher = self.supervisor.spawn("gateway-route-refresh", self._refresh_routes)

    def ready_line(self) -> str:
        tcp = f" tcp={self.tcp_address}" if self.tcp_address else ""
        return (f"chatplane gateway ready id={self.instance_id} ws={self.ws_url}{tcp} "
                f"grpc={self.grpc_address} http={self.base_url} admin={self.admin_url}")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.publisher is not None:
            await self.publisher.stop()
        if self._tcp is not None:
            self._tcp.close()
        for conn in list(self.gateway.connections):  # what a drain did not move
            conn.reconnect(self.settings.drain.reconnect_delay_ms, "gateway stopping")
        await asyncio.sleep(0.05)
        await self.heads.stop()
        await self.gateway.stop()
        await self.revocation_watcher.stop()
        if self._http is not None:
            self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self.audit.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
        await self.im.lane_streams.close()
        await self.peers.close()
        await self.supervisor.stop()
        await self.redis.aclose()
