"""`chatplane ipconf`: dispatch as its own process, ranking gateways from Redis.

Gateways publish themselves (`cp:gateway:<id>`: addresses, connections, CPU
load, draining) every third of the registry TTL. The directory here reads
that list at most once a second (a window: a crowd of dispatch requests costs
one Redis read, and every one of them is ranked on the same numbers, spread
by `dispatch.rank`'s per-uid hash). If Redis does not answer, the last list
is served (it ages out after a minute).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from chatplane import certs, metrics
from chatplane.ipconf.dispatch import GatewayInfo, by_health, fallbacks_of, make_handler
from chatplane.ipconf.probes import GatewayProbes
from chatplane.registry import instances as registry
from chatplane.rpc import serving
from chatplane.rpc.adminport import probes_app, start_admin
from chatplane.settings import Settings
from chatplane.supervision import Supervisor

STALE_AFTER_S = 60.0


def gateway_info(gateway_id: str, fields: dict[str, str]) -> GatewayInfo | None:
    try:
        return GatewayInfo(
            gateway_id=gateway_id, ws_url=fields["ws"], tcp_address=fields.get("tcp", ""),
            connections=int(fields.get("connections", "0")),
            load=float(fields.get("load", "0")), draining=fields.get("draining", "0") == "1")
    except (KeyError, ValueError):
        return None


class RedisDirectory:
    def __init__(self, cache: registry.CachedInstances) -> None:
        self.cache = cache
        self.requests = 0
        self._good_at = time.monotonic()

    async def gateways(self) -> Sequence[GatewayInfo]:
        self.requests += 1
        failures = self.cache.failures
        live = await self.cache.get()
        if self.cache.failures == failures:
            self._good_at = time.monotonic()
        elif time.monotonic() - self._good_at > STALE_AFTER_S:
            return []
        found = (gateway_info(i, f) for i, f in live.items())
        return [g for g in found if g is not None]


class IpconfApp:
    kind = "ipconf"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if not settings.storage.redis_url:
            raise ValueError("ipconf needs CHATPLANE_REDIS_URL")
        self.instance_id = settings.server.server_id or f"ipconf-{socket.gethostname()}"
        self.redis = registry.connect(settings.storage.redis_url,
                                      timeout_s=settings.links.rpc_deadline_s / 2,
                                      tls=settings.tls)
        instances = registry.Instances(self.redis, settings.links.registry_ttl_s)
        self.cache = registry.CachedInstances(instances, "gateway",
                                              registry.DISPATCH_MAX_AGE_S)
        self.directory = RedisDirectory(self.cache)
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.supervisor = Supervisor(settings.supervision)
        # the peer regions' public gateways, probed: dispatch lists them by health
        self.probes = GatewayProbes(fallbacks_of(settings.links.peers, settings.server.region),
                                    settings.links.peer_probe_s, settings.links.peer_timeout_s)
        self._admin_runner: web.AppRunner | None = None
        self.admin_url = ""
        self.certs: certs.ReloadingCert | None = None

    def _ready(self) -> bool:
        return (self.cache.known > 0 or self.cache.failures == 0) and self.supervisor.ready()

    def _families(self) -> Iterator[Metric]:
        yield metrics.counter("chatplane_dispatch_requests_total", "dispatch requests",
                              self.directory.requests)
        yield metrics.counter("chatplane_dispatch_registry_failures_total",
                              "failed registry reads", self.cache.failures)
        yield metrics.gauge("chatplane_dispatch_gateways", "gateways known", self.cache.known)
        yield metrics.counter("chatplane_dispatch_peer_probes_total",
                              "probes of the peer regions' public gateways (GET /readyz)",
                              self.probes.probes)
        yield metrics.counter("chatplane_dispatch_peer_probe_failures_total",
                              "peer gateway probes that failed (the region is listed last)",
                              self.probes.failures)

    def metrics_registry(self) -> CollectorRegistry:
        """What /metrics shows (once the certificate is loaded, in start())."""
        return metrics.registry(self._families, certs.families_of(self.certs),
                                self.supervisor.families)

    async def start(self) -> None:
        server = self.settings.server
        app = web.Application()
        probes = self.probes
        if probes.fallbacks:
            self.supervisor.spawn("peer-gateway-probes", probes.run)
        app.add_routes([web.get("/v1/dispatch", make_handler(
            self.directory, lambda: by_health(probes.fallbacks, probes.health)))])
        app.add_routes(serving.probe_routes(self._ready, self.supervisor.details))
        # dispatch over HTTPS too: a rewritten answer could send clients' tokens elsewhere
        self.certs = certs.from_settings(self.settings.tls.cert, self.settings.tls.key)
        tls = self.certs.context if self.certs is not None else None
        self._runner, port = await serving.start_http(app, server.host, server.http_port,
                                                      ssl_context=tls)
        host = serving.advertised_host(self.settings)
        self.base_url = f"{'https' if tls else 'http'}://{host}:{port}"
        self._admin_runner, admin_port = await start_admin(
            probes_app(self._ready, self.metrics_registry(), self.supervisor.details), self.settings)
        self.admin_url = f"http://{host}:{admin_port}"

    def ready_line(self) -> str:
        return (f"chatplane ipconf ready id={self.instance_id} http={self.base_url}"
                f" admin={self.admin_url}")

    async def stop(self) -> None:
        await self.supervisor.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.redis.aclose()
