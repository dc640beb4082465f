"""One process's own device routes, mirrored into Redis (`chatplane up`).

`chatplane up` keeps its routes in memory (its state tier's `MemoryRoutes`):
one process holds every connection, so memory is the authority and nothing
in `up` reads the mirror back. With a Redis URL it also writes them to the `cp:route:<uid>` hashes
that the cluster's state tier keeps (routes/redis.py), so presence and
tooling that read the registry see an `up` node like any gateway.

The mirror is never in the login path: writes are batched in the background,
a Redis outage only delays them (routes expire by their TTL meanwhile), and
`refresh` puts every live route back, periodically and at once after Redis
lost its keys (the node's Publisher notices that).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from redis.exceptions import RedisError

from chatplane.routes.base import ROUTE_REFRESH_S, RouteEntry, Routes
from chatplane.supervision import Supervisor

log = logging.getLogger("chatplane.registry")

BATCH_DELAY_S = 0.05  # logins arriving together share one pipeline


class RoutedLink(Protocol):
    """A gateway's connection as a route: the device it serves, since when."""

    @property
    def user_id(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    @property
    def conn_id(self) -> str: ...

    @property
    def opened_ms(self) -> float: ...


class RouteMirror:
    def __init__(self, routes: Routes, gateway_id: str,
                 live: Callable[[], Sequence[RoutedLink]]) -> None:
        self.routes = routes
        self.gateway_id = gateway_id
        self.live = live  # the connections whose routes should exist
        self.failures = 0
        self._added: dict[tuple[str, str, str], RouteEntry] = {}
        self._removed: list[RouteEntry] = []
        self._flush: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def _entry(self, link: RoutedLink) -> RouteEntry:
        return RouteEntry(link.user_id, link.device_id, self.gateway_id, link.conn_id,
                          int(link.opened_ms))

    def added(self, link: RoutedLink) -> None:
        entry = self._entry(link)
        self._added[(entry.user_id, entry.device_id, entry.conn_id)] = entry
        self._schedule()

    def removed(self, link: RoutedLink) -> None:
        entry = self._entry(link)
        # a connection that came and went within one batch is never written
        if self._added.pop((entry.user_id, entry.device_id, entry.conn_id), None) is None:
            self._removed.append(entry)
            self._schedule()

    def _schedule(self) -> None:
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        await asyncio.sleep(BATCH_DELAY_S)
        added, self._added = list(self._added.values()), {}
        removed, self._removed = self._removed, []
        try:
            # adds first: removing an older connection of the same device
            # deletes only a route that still names it
            await self.routes.register(added)
            await self.routes.unregister(removed)
        except (RedisError, OSError) as exc:
            # the routes come back with the next refresh; stale ones expire
            self.failures += 1
            log.warning("route mirror write failed (%d added, %d removed): %s",
                        len(added), len(removed), exc)

    async def refresh(self) -> None:
        """Re-assert every live route (after Redis lost its keys, and
        periodically so they outlive their TTL)."""
        entries = [self._entry(link) for link in self.live() if link.user_id]
        for start in range(0, len(entries), 1000):
            await self.routes.refresh(entries[start:start + 1000])

    def start(self, supervisor: Supervisor) -> None:
        self._refresher = supervisor.spawn("route-mirror-refresh", self._refresh_forever)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(ROUTE_REFRESH_S)
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                self.failures += 1
                log.warning("route mirror refresh failed: %s", exc)

    async def stop(self) -> None:
        """Stop refreshing; let a pending write finish briefly (what it
        misses expires by the routes' TTL)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self._flush is not None and not self._flush.done():
            try:
                await asyncio.wait_for(self._flush, 1.0)
            except (TimeoutError, RedisError, OSError):
                pass
