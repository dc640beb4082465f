"""`chatplane state`: the state tier as its own process.

A gRPC server (`StateServicer`), the HTTP probes (and `/metrics` on the
admin port), and its entry in the Redis
registry (`cp:state:<id>` with its gRPC address), which is how gateways and
im instances find state when `CHATPLANE_STATE_ADDRS` is not set.
"""

from __future__ import annotations

import socket

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry

from chatplane import metrics
from chatplane.gateway.client import RemoteGateways
from chatplane.registry import instances as registry
from chatplane.routes.redis import RedisRoutes
from chatplane.rpc import serving
from chatplane.rpc.adminport import probes_app, start_admin
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from chatplane.settings import Settings
from chatplane.state.server import StateServicer
from chatplane.supervision import Supervisor
from chatplane.v1 import services_pb2_grpc as sgrpc


class StateApp:
    kind = "state"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        links = settings.links
        if not settings.storage.redis_url:
            raise ValueError("the state tier needs CHATPLANE_REDIS_URL")
        self.instance_id = settings.server.server_id or f"state-{socket.gethostname()}"
        self.redis = registry.connect(settings.storage.redis_url, timeout_s=links.rpc_deadline_s / 2,
                                      tls=settings.tls)
        self.instances = registry.Instances(self.redis, links.registry_ttl_s)
        self.security = LinkSecurity.from_settings(settings, "state")
        self.peers = Peers(links.rpc_deadline_s, self.security)
        self.gateway_links = RemoteGateways(self.peers)
        self.servicer = StateServicer(
            RedisRoutes(self.redis), registry.CachedInstances(self.instances, "gateway", 1.0), self.peers,
            self.gateway_links.push,
            group_interval_ms=settings.social.group_push_interval_ms,
            group_max_messages=settings.social.group_push_max_messages)
        self.grpc_address = ""
        self.base_url = ""
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.admin_url = ""
        self.publisher: serving.Publisher | None = None
        self.supervisor = Supervisor(settings.supervision)
        self.servicer.groups.supervisor = self.supervisor  # the group relay's workers

    def _ready(self) -> bool:
        return self.publisher is not None and self.publisher.healthy and self.supervisor.ready()

    def metrics_registry(self) -> CollectorRegistry:
        return metrics.registry(self.servicer.families, self.gateway_links.families,
                                self.supervisor.families)

    async def start(self) -> None:
        server, links = self.settings.server, self.settings.links
        host = serving.advertised_host(self.settings)
        self._grpc, port = await serving.start_grpc(
            server.host, links.grpc_port,
            lambda s: sgrpc.add_StateServicer_to_server(self.servicer, s), self.security)
        self.grpc_address = f"{host}:{port}"
        app = web.Application()
        app.add_routes(serving.probe_routes(self._ready, self.supervisor.details))
        self._runner, http_port = await serving.start_http(app, server.host, server.http_port)
        self.base_url = f"http://{host}:{http_port}"
        self._admin_runner, admin_port = await start_admin(
            probes_app(self._ready, self.metrics_registry(), self.supervisor.details),
            self.settings)
        self.admin_url = f"http://{host}:{admin_port}"
        self.publisher = serving.Publisher(
            self.instances, self.kind, self.instance_id,
            lambda: {"grpc": self.grpc_address, "http": self.base_url})
        await self.publisher.begin(self.supervisor)

    def ready_line(self) -> str:
        return (f"chatplane state ready id={self.instance_id} grpc={self.grpc_address}"
                f" http={self.base_url} admin={self.admin_url}")

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.supervisor.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.gateway_links.close()
        await self.peers.close()
        await self.redis.aclose()
