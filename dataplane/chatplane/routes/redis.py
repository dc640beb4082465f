"""Device routes in Redis (a cluster's state tier, and `up`'s mirror).

  cp:route:<uid>   hash   device -> "<gateway_id>|<conn_id>|<opened_ms>"   TTL ttl_s

The twin of memory.py: the rule of base.py (`decide`) is the Lua script
`_WRITE` here, so the check and the write are one step and two
registrations cannot interleave; tests/routes/test_conformance.py proves the
two alike. A write (re)sets the user's hash TTL, so the routes of a gateway
that stopped refreshing expire, and a Redis restarted empty is refilled by
the gateways' refreshes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from chatplane.routes.base import ROUTE_TTL_S, RouteEntry, to_kick

# The connection part of a stored value ("<gateway>|<conn>|"), to compare,
# and its open time (0 when it has none: counts as oldest).
_FIELDS = """
local function conn_of(value)
  return string.match(value, '^([^|]*|[^|]*)')
end
local function opened_of(value)
  return tonumber(string.match(value, '^[^|]*|[^|]*|(%d+)$') or '0')
end
"""

# base.decide: KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = value,
# ARGV[3] = opened_ms, ARGV[4] = ttl ms, ARGV[5] = '1' for a login, '0' for a
# refresh. Returns {previous value or '', 1 when refused}.
_WRITE = _FIELDS + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and conn_of(cur) ~= conn_of(ARGV[2]) then
  local held, incoming = opened_of(cur), tonumber(ARGV[3])
  if held > incoming or (held == incoming and ARGV[5] ~= '1') then
    return {cur, 1}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {cur or '', 0}
"""

# KEYS[1] = route hash; ARGV[1] = device, ARGV[2] = this connection's value
_DELETE_IF_SAME = _FIELDS + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and conn_of(cur) == conn_of(ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
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


def route_key(user_id: str) -> str:
    return f"cp:route:{user_id}"


def _value(r: RouteEntry) -> str:
    return f"{r.gateway_id}|{r.conn_id}|{r.opened_ms}"


def _parse(user_id: str, device_id: str, value: str) -> RouteEntry:
    gateway_id, _, rest = value.partition("|")
    conn_id, _, opened = rest.partition("|")
    return RouteEntry(user_id, device_id, gateway_id, conn_id, int(opened or 0))


class RedisRoutes:
    def __init__(self, redis: aioredis.Redis, ttl_s: float = ROUTE_TTL_S) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self._write = redis.register_script(_WRITE)
        self._delete_if_same = redis.register_script(_DELETE_IF_SAME)
        self._gateways_of = redis.register_script(_GATEWAYS_OF)

    async def _write_all(self, routes: Sequence[RouteEntry], *, login: bool) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in routes:
                await self._write(keys=[route_key(r.user_id)],
                                  args=[r.device_id, _value(r), r.opened_ms, self.ttl_ms,
                                        1 if login else 0],
                                  client=pipe)
            return list(await pipe.execute())

    async def register(self, routes: Sequence[RouteEntry]) -> list[RouteEntry | None]:
        if not routes:
            return []
        replies = await self._write_all(routes, login=True)
        kicked: list[RouteEntry | None] = []
        for r, (old, refused) in zip(routes, replies, strict=True):
            held = _parse(r.user_id, r.device_id, old) if old else None
            kicked.append(to_kick(held, r, not int(refused)))
        return kicked

    async def refresh(self, routes: Sequence[RouteEntry]) -> None:
        if routes:
            await self._write_all(routes, login=False)

    async def unregister(self, routes: Iterable[RouteEntry]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for r in routes:
                await self._delete_if_same(keys=[route_key(r.user_id)],
                                           args=[r.device_id, _value(r)], client=pipe)
            await pipe.execute()

    async def lookup(self, user_ids: Sequence[str]) -> dict[str, list[RouteEntry]]:
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
        if not user_ids:
            return {}
        flat = await self._gateways_of(keys=[route_key(u) for u in user_ids])
        by_gateway: dict[str, list[str]] = {}
        for k in range(0, len(flat), 2):
            by_gateway.setdefault(flat[k + 1], []).append(user_ids[int(flat[k]) - 1])
        return by_gateway
