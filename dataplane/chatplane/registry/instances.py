"""Live instances of each tier, published in Redis with a TTL.

Each instance refreshes `cp:<kind>:<id>` (a hash of its fields) every third
of the TTL and keeps its id in the index `cp:<kind>s` (a sorted set scored by
expiry time). Readers drop ids whose score passed, so a `kill -9` leaves the
set within one TTL. Redis is a cache here: after a restart that lost every
key, the next refresh rebuilds everything, and `publish` says so (it returns
False when the key was missing) so the caller can republish what hangs on it
(a gateway re-registers its devices' routes).

Redis keys (`kind` is gateway, im or state):
  cp:<kind>:<id>   hash   fields of the instance (addresses, load, ...)   TTL
  cp:<kind>s       zset   id -> expiry (unix ms)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatplane.registry.ring import HashRing
from chatplane.settings import Tls

log = logging.getLogger("chatplane.registry")

# How old ipconf's list of gateways may be (its CachedInstances' max age). A draining
# gateway waits this long after publishing its draining flag before it sends anyone away.
DISPATCH_MAX_AGE_S = 1.0


def instance_key(kind: str, instance_id: str) -> str:
    return f"cp:{kind}:{instance_id}"


def index_key(kind: str) -> str:
    return f"cp:{kind}s"


def connect(url: str, timeout_s: float = 1.0, tls: Tls | None = None) -> aioredis.Redis:
    """A client whose every command has a deadline (a dead Redis costs at
    most `timeout_s` per call, never a hang). A `rediss://` URL is TLS, the
    server verified against CHATPLANE_REDIS_TLS_CA (else the system CAs), with
    CHATPLANE_REDIS_TLS_CERT/KEY as the client certificate when set."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        decode_responses=True, health_check_interval=5, **redis_tls_options(url, tls))


def redis_tls_options(url: str, tls: Tls | None) -> dict[str, Any]:
    if not url.startswith("rediss://"):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if tls is not None and tls.redis_ca:
        options["ssl_ca_certs"] = tls.redis_ca
    if tls is not None and tls.redis_cert:
        options["ssl_certfile"], options["ssl_keyfile"] = tls.redis_cert, tls.redis_key
    return options


class Instances:
    def __init__(self, redis: aioredis.Redis, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_ms = max(1, int(ttl_s * 1000))

    async def publish(self, kind: str, instance_id: str, fields: Mapping[str, str | int | float]) -> bool:
        """Write or refresh one instance; True when it was already there."""
        key = instance_key(kind, instance_id)
        expiry = int(time.time() * 1000) + self.ttl_ms
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(key)
            pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
            pipe.pexpire(key, self.ttl_ms)
            pipe.zadd(index_key(kind), {instance_id: expiry})
            existed, *_ = await pipe.execute()
        return bool(existed)

    async def remove(self, kind: str, instance_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(instance_key(kind, instance_id))
            pipe.zrem(index_key(kind), instance_id)
            await pipe.execute()

    async def live(self, kind: str) -> dict[str, dict[str, str]]:
        """id -> fields of every instance whose TTL has not passed."""
        now = int(time.time() * 1000)
        index = index_key(kind)
        await self.redis.zremrangebyscore(index, 0, now)
        ids = [str(i) for i in await self.redis.zrange(index, 0, -1)]
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for instance_id in ids:
                pipe.hgetall(instance_key(kind, instance_id))
            rows = await pipe.execute()
        return {i: row for i, row in zip(ids, rows, strict=True) if row}


class CachedInstances:
    """`live(kind)` read at most once per `max_age_s` (dispatch and routing
    must not cost a Redis round trip per request). When Redis fails, or
    answers with nothing (restarted empty, not refilled yet), the last known
    list is kept for `grace_s`: peers stay reachable while Redis restarts."""

    def __init__(self, instances: Instances, kind: str, max_age_s: float = 1.0,
                 grace_s: float = 5.0) -> None:
        self.instances = instances
        self.kind = kind
        self.max_age_s = max_age_s
        self.grace_s = grace_s
        self._value: dict[str, dict[str, str]] = {}
        self._read_at = -1e9
        self._found_at = -1e9
        self.failures = 0

    @property
    def known(self) -> int:
        return len(self._value)

    def invalidate(self) -> None:
        self._read_at = -1e9

    async def get(self) -> dict[str, dict[str, str]]:
        now = time.monotonic()
        if now - self._read_at >= self.max_age_s:
            self._read_at = now
            try:
                fresh = await self.instances.live(self.kind)
                if fresh or now - self._found_at > self.grace_s:
                    self._value = fresh
                if fresh:
                    self._found_at = now
            except (RedisError, OSError) as exc:
                self.failures += 1
                log.warning("registry read of %s failed (keeping %d known): %s",
                            self.kind, len(self._value), exc)
        return self._value


class LiveRing:
    """The hash ring of one tier's live instances, read from a static address
    list (each address its own id) or from the registry (each instance's
    `grpc` field). Gateways route im requests, im instances forward events,
    and im delivers to state through it."""

    def __init__(self, static: Sequence[str], registry: CachedInstances | None) -> None:
        self.static = list(static)
        self.registry = registry
        self.ring = HashRing(self.static)
        self.addresses: dict[str, str] = {a: a for a in self.static}

    async def _refresh(self) -> None:
        if self.static or self.registry is None:
            return
        live = await self.registry.get()
        if not live:  # restarted empty, or not refilled yet: read again once
            self.registry.invalidate()
            live = await self.registry.get()
        self.addresses = {i: f["grpc"] for i, f in live.items() if f.get("grpc")}
        self.ring.update(self.addresses)

    @property
    def members(self) -> frozenset[str]:
        return self.ring.members

    async def owners(self, key: str) -> list[tuple[str, str]]:
        """(instance id, gRPC address) in ring order from the owner of `key`."""
        await self._refresh()
        return [(i, self.addresses[i]) for i in self.ring.owners(key) if i in self.addresses]
