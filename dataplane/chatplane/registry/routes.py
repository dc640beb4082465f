"""Device routes and presence in Redis: which gateway connection holds a device.

  cp:route:<uid>   hash   device -> "<gateway_id>|<conn_id>|<opened_ms>"   TTL ROUTE_TTL_S

A user is online while the hash exists. Gateways register a device before
answering its login and re-register all their devices every ROUTE_REFRESH_S
(and at once when Redis lost its keys), so routes rebuild by themselves after
a Redis restart and the routes of a killed gateway expire. Unregister deletes
a route only if it still names the same connection (a newer login of the
device elsewhere must not be erased by the old connection's close).

Of two connections of one device, the one opened later keeps the route
(`opened_ms`, wall clock at the gateway), whichever login finishes last: a
login that was slow on an older connection must not take the device from
the newer one (the in-process state tier keeps the same rule). The check and
the write are one Lua script, so two registrations cannot interleave.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

ROUTE_TTL_S = 60
ROUTE_REFRESH_S = 20.0

# The connection part of a stored value ("<gateway>|<conn>|"), to compare.
_CONN_OF = """
local function conn_of(value)
  return string.match(value, '^([^|]*|[^|]*)')
end
"""

# KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = this connection's value
_DELETE_IF_SAME = _CONN_OF + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and conn_of(cur) == conn_of(ARGV[2]) then
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
    opened_ms: int = 0  # wall clock at the gateway: of two connections, the newer wins

    @property
    def value(self) -> str:
        return f"{self.gateway_id}|{self.conn_id}|{self.opened_ms}"


def route_key(user_id: str) -> str:
    return f"cp:route:{user_id}"


def _parse(user_id: str, device_id: str, value: str) -> RouteEntry:
    gateway_id, _, rest = value.partition("|")
    conn_id, _, opened = rest.partition("|")
    return RouteEntry(user_id, device_id, gateway_id, conn_id, int(opened or 0))


# The open time in a stored value (0 when it has none: counts as oldest).
_OPENED_OF = """
local function opened_of(value)
  return tonumber(string.match(value, '^[^|]*|[^|]*|(%d+)$') or '0')
end
"""

# KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = value, ARGV[3] = ttl,
# ARGV[4] = opened_ms. Sets the route when absent, already this connection's,
# or an older connection's (after a Redis loss the newest one wins again).
_SET_IF_ABSENT_OR_SAME = _CONN_OF + _OPENED_OF + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == false or conn_of(cur) == conn_of(ARGV[2])
    or opened_of(cur) < tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = value, ARGV[3] = opened_ms,
# ARGV[4] = ttl. Returns {previous value or '', 1 when refused}: a route of a
# connection opened later stays (a value without a time counts as oldest).
_SET_IF_NEWER = _CONN_OF + _OPENED_OF + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and conn_of(cur) ~= conn_of(ARGV[2]) and opened_of(cur) > tonumber(ARGV[3]) then
  return {cur, 1}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {cur or '', 0}
"""


# KEYS = route hashes of users. Returns {i, gateway, i, gateway, ...}: for
# the i-th key (1-based), each distinct gateway holding one of its devices.
# One flat reply instead of a hash per user: large groups read 10,000 at once.
_GATEWAYS_OF = """
local out = {}
for i, key in ipairs(KEYS) do
  local seen = {}
  for _, value in ipairs(redis.call('HVALS', key)) do
    local gateway = string.match(value, '^([^|]*)')
    if not seen[gateway] then
      seen[gateway] = true
      out[#out + 1] = i
      out[#out + 1] = gateway
    end
  end
end
return out
"""


class Routes:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._delete_if_same = redis.register_script(_DELETE_IF_SAME)
        self._refresh = redis.register_script(_SET_IF_ABSENT_OR_SAME)
        self._register = redis.register_script(_SET_IF_NEWER)
        self._gateways_of = redis.register_script(_GATEWAYS_OF)

    async def refresh(self, routes: Sequence[RouteEntry]) -> None:
        """Re-assert routes (periodically, or after Redis lost them) without
        taking a device from a newer connection (from an older one, yes)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in routes:
                await self._refresh(keys=[route_key(r.user_id)],
                                    args=[r.device_id, r.value, ROUTE_TTL_S, r.opened_ms],
                                    client=pipe)
            await pipe.execute()

    async def register(self, routes: Sequence[RouteEntry]) -> list[RouteEntry | None]:
        """Set the routes, each unless a newer connection of its device holds
        it; returns, per route, the connection to kick: the one it replaced,
        or the route itself when it was refused (None: nothing to kick)."""
        if not routes:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in routes:
                await self._register(keys=[route_key(r.user_id)],
                                     args=[r.device_id, r.value, r.opened_ms, ROUTE_TTL_S],
                                     client=pipe)
            replies = await pipe.execute()
        kicked: list[RouteEntry | None] = []
        for r, (old, refused) in zip(routes, replies, strict=True):
            if int(refused):
                kicked.append(r)
            else:
                previous = _parse(r.user_id, r.device_id, old) if old else None
                same = previous is not None and previous.conn_id == r.conn_id \
                    and previous.gateway_id == r.gateway_id
                kicked.append(None if previous is None or same else previous)
        return kicked

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

    async def users_by_gateway(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """Which of these users have a device on which gateway (offline users
        are absent); one script call, for large-group fan-out."""
        if not user_ids:
            return {}
        flat = await self._gateways_of(keys=[route_key(u) for u in user_ids])
        by_gateway: dict[str, list[str]] = {}
        for k in range(0, len(flat), 2):
            by_gateway.setdefault(flat[k + 1], []).append(user_ids[int(flat[k]) - 1])
        return by_gateway
