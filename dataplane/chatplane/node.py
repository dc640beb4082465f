"""All four tiers in one process (`chatplane up`): ipconf, gateway, state, im.

The tiers talk through their in-process interfaces here; `chatplane cluster
up` runs the same services as separate processes. The public HTTP port serves
WebSocket, dispatch and health; the admin port (default HTTP port + 1) the
admin API, metrics, drain and `/v1/peers` (rpc/adminport.py); raw TCP has
its own. Token revocations are read from storage every half
`session_check_s` and close the sessions they revoke.
With peers listed (`CHATPLANE_PEERS`) it also serves the cross-region link
(`Region`) on the gRPC port and probes every peer; on SQLite the link also places
1:1 chats' and groups' home regions, forwards sends to them and follows each peer's replicated
log (regions/homes.py, regions/replication.py, wired by im/regionwiring.py, as the
cluster's im tier wires them); groups are homed where they are made,
and changes to them made elsewhere are forwarded to that home too. On a CQL keyspace
shared by the regions (two datacenters) the database copies the rows: homes come from the
shared `homes` row, sends are forwarded the same way, and each home's notices tell the
other region which entries to write and push (regions/notices.py). Without peers, no gRPC
port is opened (many single-machine nodes may share a host).

With a Redis URL the node also publishes itself in the registry the cluster
tiers use (`cp:gateway:<id>`: addresses, connections, load, draining) and
mirrors its device routes there. Memory and storage stay the authority:
nothing here reads Redis back, so losing it (a restart, FLUSHALL) costs
nothing but the registry entries, which come back by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from chatplane import certs, metrics
from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner, read_or_create_secret
from chatplane.gateway import admission, drainapi, webapp
from chatplane.gateway.app import CpuLoad, registry_fields
from chatplane.gateway.bulk import BulkWriter
from chatplane.gateway.service import Gateway
from chatplane.gateway.transports import GATEWAY, TcpFrameProtocol, websocket_handler
from chatplane.im import regionwiring, sharedwiring
from chatplane.im.admin import AdminApi
from chatplane.im.service import ImService
from chatplane.ipconf.dispatch import (
    GatewayInfo,
    LocalDirectory,
    PeerHealth,
    by_health,
    fallbacks_of,
    make_handler,
)
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.regions import links as region_links
from chatplane.regions.failover import lease_ttl
from chatplane.regions.leases import Lease, WitnessLink
from chatplane.regions.notices import NoticeLog
from chatplane.registry import instances as registry
from chatplane.registry.mirror import RouteMirror
from chatplane.revocations import RevocationWatcher
from chatplane.routes.memory import MemoryRoutes
from chatplane.routes.redis import RedisRoutes
from chatplane.rpc import serving
from chatplane.rpc.adminport import AuditLog, start_admin
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.settings import Settings
from chatplane.state.service import StateService
from chatplane.storage import archiving
from chatplane.storage.base import Revocation, Storage
from chatplane.storage.factory import make_storage
from chatplane.supervision import Supervisor

log = logging.getLogger("chatplane.node")

GATEWAY_KIND = "gateway"  # the registry kind dispatch ranks (cp:gateway:<id>)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.supervisor = Supervisor(settings.supervision)
        data_dir = Path(settings.storage.data_dir)
        server = settings.server
        self.signer = TokenSigner.configured(settings)
        self.audit = AuditLog.configured(settings)
        self.admin_secret = server.admin_secret or read_or_create_secret(
            data_dir / ADMIN_SECRET_FILE)
        self.server_id = server.server_id or f"{socket.gethostname()}-{server.region}"
        self.storage: Storage = make_storage(settings, sole_writer=True)  # one sequencer
        self.certs: certs.ReloadingCert | None = None
        # the routes' one gateway cannot die without them: they need no TTL,
        # and nothing refreshes them (unregister removes each)
        self.state = StateService(MemoryRoutes(ttl_s=math.inf), self.server_id,
                                  group_interval_ms=settings.social.group_push_interval_ms,
                                  group_max_messages=settings.social.group_push_max_messages)
        self.im = ImService(self.storage, self.state, settings.limits, social=settings.social,
                            server_id=self.server_id, abuse=settings.abuse)
        self.redis = (registry.connect(settings.storage.redis_url, tls=settings.tls)
                      if settings.storage.redis_url else None)
        self.security = LinkSecurity.from_settings(settings, "im")  # up serves only Region
        self.mirror: RouteMirror | None = None
        self.publisher: serving.Publisher | None = None
        self.cpu = CpuLoad()
        if self.redis is not None:
            self.mirror = RouteMirror(RedisRoutes(self.redis), self.server_id,
                                      lambda: list(self.gateway.connections))
            self.state.mirror = self.mirror
        # the tiers wired in process through the interfaces gRPC carries in a
        # cluster: im -> state (Deliverer), state -> gateway (Downlink),
        # gateway -> im (ImApi) and gateway -> state (Registry)
        self.gateway = Gateway(settings, self.im, self.state, self.signer, self.server_id)
        self.gateway.group_writer = BulkWriter.create()
        self.state.downlink = self.gateway
        self.state.groups.supervisor = self.supervisor
        self.prober = region_links.prober_for(
            settings, self.server_id, self.signer.peer_proof, self.security)
        self.sequencing: region_links.Sequencing | None = None
        self.shared: region_links.SharedSequencing | None = None  # regions on one keyspace
        if self.prober.links and regionwiring.linkable(self.storage):
            # several regions on embedded stores: homes, forwarding, replication
            self.sequencing = regionwiring.link(settings, self.storage, self.im, self.prober,
                                                self.server_id, self._witness(),
                                                sole_writer=True)
        elif self.prober.links and sharedwiring.shared(self.storage):
            # regions on one CQL keyspace: the notices in this process's memory
            self.shared = sharedwiring.link(settings, self.storage, self.im, self.prober,
                                            NoticeLog())
        self.revocation_watcher = RevocationWatcher(
            self.gateway.revocations, self.storage.revocations,
            settings.tokens.session_check_s / 2, self.gateway.apply_revocations)
        self.grpc_address = ""
        self.admin_url = ""
        self._admin_runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self.base_url = ""
        self.ws_url = ""
        self.tcp_address = ""
        self._runner: web.AppRunner | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self._http_server: asyncio.AbstractServer | None = None
        self.ready = False

    def _witness(self) -> WitnessLink | None:
        """The failover witness link (regions/leases.py), over the Region link's security."""
        links = self.settings.links
        if not links.failover_witness or links.failover_after_s <= 0:
            return None
        ttl = lease_ttl(links.failover_after_s)
        return WitnessLink(self.settings.server.region, links.failover_witness, Lease(ttl),
                           min(links.peer_timeout_s, ttl / 3), self.security)

    def _ready(self) -> bool:
        return self.ready and not self.gateway.draining and self.supervisor.ready()

    def _app(self) -> web.Application:
        """The public port: what clients and load balancers may reach."""
        app = web.Application(client_max_size=1024 * 1024)
        app[GATEWAY] = self.gateway
        directory = LocalDirectory(self._local_gateways)
        app.add_routes([
            web.get("/ws", websocket_handler),
            web.get("/v1/dispatch", make_handler(directory, self._fallbacks())),
            *serving.probe_routes(self._ready, self._probe_details),
        ])
        app.add_routes(webapp.routes(self.signer if self.settings.server.dev_login else None))
        return app

    def _fallbacks(self) -> Callable[[], list[dict[str, str]]]:
        """The peer regions' gateways for dispatch, ordered by what the probes say now
        (the nearest region this one reaches first)."""
        gateways = fallbacks_of(self.settings.links.peers, self.settings.server.region)

        def ordered() -> list[dict[str, str]]:
            return by_health(gateways, {name: PeerHealth(link.ok, link.rtt_s)
                                        for name, link in self.prober.links.items()
                                        if link.verdict is not None or link.failures})

        return ordered

    def metrics_registry(self) -> CollectorRegistry:
        """Every tier's figures, once (the registry refuses a name two parts export)."""
        return metrics.registry(
            self.gateway.metrics.families, self.im.families, self.state.groups.families,
            self.storage.families, self.prober.families, certs.families_of(self.certs),
            self.supervisor.families,
            *([self.sequencing.replication.families, self.sequencing.moves.families]
              if self.sequencing else []),
            *([self.sequencing.user_moves.families]
              if self.sequencing and self.sequencing.user_moves else []),
            *([self.shared.follower.families, self.shared.homes.families]
              if self.shared else []))

    def _admin_app(self) -> web.Application:
        """The admin port (rpc/adminport.py)."""
        app = web.Application(client_max_size=1024 * 1024)
        app.add_routes([
            *serving.probe_routes(self._ready, self._probe_details),
            *serving.metrics_routes(self.metrics_registry()),
            web.post("/admin/drain", self._drain),
            web.get("/admin/drain", self._drain_status),
            *self.prober.routes(),
        ])
        app.add_routes(AdminApi(self.storage, self.signer, self.admin_secret, self.im.groups,
                                audit=self.audit, on_revoked=self._revoked,
                                move_home=self._move_home if self.sequencing else None,
                                move_user_home=(self._move_user_home if self.sequencing
                                                and self.sequencing.user_moves else None),
                                ).routes())
        return app

    async def _move_home(self, conversation_id: str, region: str) -> dict[str, Any]:
        """The admin API's home move (regions/moving.py), made on the region that takes
        the home: it waits for the old home's log, so it runs where that is applied."""
        assert self.sequencing is not None
        self._on_region(region)
        return await self.sequencing.moves.move_here(conversation_id)

    async def _move_user_home(self, user_id: str, region: str) -> dict[str, Any]:
        """The admin API's move of a user's home (regions/user_moves.py), made on the
        region that takes it, like a conversation's."""
        assert self.sequencing is not None and self.sequencing.user_moves is not None
        self._on_region(region)
        return await self.sequencing.user_moves.move_here(user_id)

    def _on_region(self, region: str) -> None:
        me = self.settings.server.region
        if region != me:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT,
                                f"field region: make this call on region {region}'s admin"
                                f" port (the region that takes the home), not on {me}'s")

    async def _revoked(self, revocation: Revocation) -> None:
        """A revocation made here closes its sessions now, not at the next poll."""
        new = self.gateway.revocations.merge([revocation])
        if new:
            self.gateway.apply_revocations(new)

    def _local_gateways(self) -> list[GatewayInfo]:
        return [GatewayInfo(
            gateway_id=self.server_id, ws_url=self.ws_url, tcp_address=self.tcp_address,
            connections=len(self.gateway.connections), load=0.0, draining=self.gateway.draining,
        )]

    def _probe_details(self) -> dict[str, object]:
        details: dict[str, object] = {"draining": self.gateway.draining,
                                      **self.prober.summary(), **self.supervisor.details()}
        if self.publisher is not None:
            details["registry"] = "ok" if self.publisher.healthy else "unreachable"
        return details

    def _registry_fields(self) -> dict[str, str | int | float]:
        return registry_fields(self.gateway, self.cpu, ws=self.ws_url, tcp=self.tcp_address,
                               grpc_address="", http=self.base_url)

    async def _start_registry(self) -> None:
        """Fail at start when Redis is unreachable (a wrong URL is a
        configuration error); later outages are only logged."""
        if self.redis is None or self.mirror is None:
            return
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise OSError(f"Redis at {self.settings.storage.redis_url} unreachable: {exc}") from exc
        instances = registry.Instances(self.redis, self.settings.links.registry_ttl_s)
        self.publisher = await serving.Publisher(instances, GATEWAY_KIND, self.server_id,
                                                 self._registry_fields,
                                                 on_lost=self.mirror.refresh
                                                 ).begin(self.supervisor)
        self.mirror.start(self.supervisor)

    async def _start_region_link(self) -> None:
        """Serve the `Region` service on the gRPC port, then probe every peer (and
        follow each peer's replicated log)."""
        self._grpc, port = await serving.start_grpc(
            self.settings.server.host, self.settings.links.grpc_port,
            lambda server: region_links.add_to_server(self.prober, server, self.sequencing,
                                                      self.shared),
            self.security)
        self.grpc_address = f"{serving.advertised_host(self.settings)}:{port}"
        self.prober.start(self.supervisor)
        if self.sequencing is not None:
            self.sequencing.replication.start(self.supervisor)
        if self.shared is not None:
            self.shared.follower.start(self.supervisor)

    async def _drain(self, request: web.Request) -> web.Response:
        asked = await drainapi.drain_request(request, self.admin_secret, self.settings.drain,
                                             self.audit)
        if isinstance(asked, web.Response):
            return asked
        self.gateway.drain(*asked)
        if self.publisher is not None:
            self.publisher.poke()  # dispatch readers learn it now, not at the next refresh
        return web.json_response(self.gateway.drain_status(), status=202)

    async def _drain_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.gateway.drain_status())

    async def start(self) -> None:
        server = self.settings.server
        self.certs = certs.from_settings(self.settings.tls.cert, self.settings.tls.key)
        tls = self.certs.context if self.certs is not None else None
        await self.storage.open()
        self.supervisor.check("storage", self.storage.health)
        archiving.supervise(self.storage, self.supervisor)
        await self.revocation_watcher.start(self.supervisor)  # before any login is taken
        self._runner, self._http_server, port = await admission.start_public_http(
            self._app(), server.host, server.http_port, self.gateway.admission,
            self.settings.abuse, ssl_context=tls)
        host = self._http_server.sockets[0].getsockname()[0]
        self.base_url = f"{'https' if tls else 'http'}://{host}:{port}"
        public = serving.reachable_host(host, self.settings)
        self.ws_url = server.advertise_url or f"{'wss' if tls else 'ws'}://{public}:{port}/ws"
        # the admin port is plain HTTP: cluster-internal, behind the admin secret
        self._admin_runner, admin_port = await start_admin(self._admin_app(), self.settings)
        self.admin_url = f"http://{host}:{admin_port}"
        if server.tcp_port:
            loop = asyncio.get_running_loop()
            self._tcp_server = await loop.create_server(
                lambda: TcpFrameProtocol(self.gateway), server.host, server.tcp_port, ssl=tls,
                ssl_handshake_timeout=self.settings.abuse.header_timeout_s if tls else None,
                backlog=admission.LISTEN_BACKLOG)
            tcp_host, tcp_port = self._tcp_server.sockets[0].getsockname()[:2]
            tcp_public = server.advertise_tcp or (
                f"{serving.reachable_host(tcp_host, self.settings)}:{tcp_port}")
            self.tcp_address = f"{'tcps://' if tls else ''}{tcp_public}"
        if self.prober.links:
            await self._start_region_link()
        self.gateway.start(self.supervisor)
        await self._start_registry()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        self.gateway.draining = True
        if self._tcp_server is not None:
            self._tcp_server.close()
        for conn in list(self.gateway.connections):
            conn.reconnect(500, "server stopping")
        await asyncio.sleep(0.05)  # let the reconnect frames go out
        await self.gateway.stop()
        await self.revocation_watcher.stop()
        await self.prober.stop()
        if self.sequencing is not None:
            await self.sequencing.replication.stop()
            await self.sequencing.homes.stop()
            if self.sequencing.user_moves is not None:
                self.sequencing.user_moves.stop()
        if self.shared is not None:
            await self.shared.follower.stop()
            await self.shared.homes.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self.publisher is not None:
            await self.publisher.stop()
        if self.mirror is not None:
            await self.mirror.stop()
        if self.redis is not None:
            await self.redis.aclose()
        if self._http_server is not None:
            self._http_server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.supervisor.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.storage.close()
        self.audit.close()
