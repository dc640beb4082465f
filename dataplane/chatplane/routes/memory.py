"""Device routes in the process's memory (`chatplane up`'s state tier).

The twin of redis.py, kept by the same rule (`base.decide`) and proven alike
by one conformance suite: a user's routes expire `ttl_s` after their last
write, as a Redis hash with a TTL does (looked at when read, and swept by a
refresh); `math.inf` when they live in the process of their one gateway.
Nothing here yields to the event loop, so calls made in order apply in
order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from chatplane.routes.base import ROUTE_TTL_S, RouteEntry, decide, to_kick


class MemoryRoutes:
    def __init__(self, ttl_s: float = ROUTE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._users: dict[str, dict[str, RouteEntry]] = {}
        self._expires: dict[str, float] = {}  # user -> monotonic deadline of their routes

    def _devices(self, user_id: str, now: float) -> dict[str, RouteEntry] | None:
        devices = self._users.get(user_id)
        if devices is not None and self._expires[user_id] <= now:
            self._drop(user_id)
            return None
        return devices

    def _drop(self, user_id: str) -> None:
        del self._users[user_id]
        del self._expires[user_id]

    def _write(self, route: RouteEntry, now: float, *, login: bool) -> RouteEntry | None:
        devices = self._devices(route.user_id, now)
        held = devices.get(route.device_id) if devices is not None else None
        if decide(held, route, login=login):
            self._users.setdefault(route.user_id, {})[route.device_id] = route
            self._expires[route.user_id] = now + self.ttl_s
            return to_kick(held, route, True)
        return to_kick(held, route, False)

    async def register(self, routes: Sequence[RouteEntry]) -> list[RouteEntry | None]:
        now = time.monotonic()
        return [self._write(r, now, login=True) for r in routes]

    async def refresh(self, routes: Sequence[RouteEntry]) -> None:
        now = time.monotonic()
        for user_id in [u for u, t in self._expires.items() if t <= now]:
            self._drop(user_id)
        for r in routes:
            self._write(r, now, login=False)

    async def unregister(self, routes: Iterable[RouteEntry]) -> None:
        now = time.monotonic()
        for r in routes:
            devices = self._devices(r.user_id, now)
            held = devices.get(r.device_id) if devices is not None else None
            if devices is not None and held is not None and held.same_connection(r):
                del devices[r.device_id]
                if not devices:
                    self._drop(r.user_id)

    async def lookup(self, user_ids: Sequence[str]) -> dict[str, list[RouteEntry]]:
        now = time.monotonic()
        found: dict[str, list[RouteEntry]] = {}
        for uid in user_ids:
            devices = self._devices(uid, now)
            if devices:
                found[uid] = list(devices.values())
        return found

    async def users_by_gateway(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        now = time.monotonic()
        by_gateway: dict[str, list[str]] = {}
        for uid in user_ids:
            devices = self._devices(uid, now)
            for gateway_id in dict.fromkeys(r.gateway_id for r in (devices or {}).values()):
                by_gateway.setdefault(gateway_id, []).append(uid)
        return by_gateway
