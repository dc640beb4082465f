"""Device routes and presence in Redis: which gateway connection holds a device.

  cp:route:<uid>   hash   device -> "<gateway_id>|<conn_id>"   TTL ROUTE_TTL_S

A user is online while the hash exists. Gateways register a device before
answering its login and re-register all their devices every ROUTE_REFRESH_S
(and at once when Redis lost its keys), so routes rebuild by themselves after
a Redis restart and the routes of a killed gateway expire. Unregister deletes
a route only if it still names the same connection (a newer login of the
device elsewhere must not be erased by the old connection's close).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

ROUTE_TTL_S = 60
ROUTE_REFRESH_S = 20.0

# KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = expected value
_DELETE_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RouteEntry:
    user_id: str
    device_id: str
    gateway_id: str
    conn_id: str

    @property
    def value(self) -> str:
        return f"{self.gateway_id}|{self.conn_id}"


def route_key(user_id: str) -> str:
    return f"cp:route:{user_id}"


def _parse(user_id: str, device_id: str, value: str) -> RouteEntry:
    gateway_id, _, conn_id = value.partition("|")
    return RouteEntry(user_id, device_id, gateway_id, conn_id)


# KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = value, ARGV[3] = ttl
_SET_IF_ABSENT_OR_SAME = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == false or cur == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class Routes:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._delete_if_same = redis.register_script(_DELETE_IF_SAME)
        self._refresh = redis.register_script(_SET_IF_ABSENT_OR_SAME)

    async def refresh(self, routes: Sequence[RouteEntry]) -> None:
        """Re-assert routes (periodically, or after Redis lost them) without
        taking a device from a newer connection."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in routes:
                await self._refresh(keys=[route_key(r.user_id)],
                                    args=[r.device_id, r.value, ROUTE_TTL_S], client=pipe)
            await pipe.execute()

    async def register(self, routes: Sequence[RouteEntry]) -> list[RouteEntry | None]:
        """Set the routes; returns, per route, the one it replaced when that
        was another connection (to be kicked)."""
        if not routes:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in routes:
                key = route_key(r.user_id)
                pipe.hget(key, r.device_id)
                pipe.hset(key, r.device_id, r.value)
                pipe.expire(key, ROUTE_TTL_S)
            replies = await pipe.execute()
        replaced: list[RouteEntry | None] = []
        for i, r in enumerate(routes):
            old = replies[3 * i]
            replaced.append(_parse(r.user_id, r.device_id, old)
                            if old and old != r.value else None)
        return replaced

    async def unregister(self, routes: Iterable[RouteEntry]) -> None:
        for r in routes:
            await self._delete_if_same(keys=[route_key(r.user_id)], args=[r.device_id, r.value])

    async def lookup(self, user_ids: Sequence[str]) -> dict[str, list[RouteEntry]]:
        """Every device route of each user (users without routes are absent)."""
        if not user_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for uid in user_ids:
                pipe.hgetall(route_key(uid))
            rows = await pipe.execute()
        found: dict[str, list[RouteEntry]] = {}
        for uid, row in zip(user_ids, rows, strict=True):
            if row:
                found[uid] = [_parse(uid, device, value) for device, value in row.items()]
        return found
