"""The route stores the conformance suite runs against, behind one factory
fixture.

`backend` is parametrised: "memory" (routes/memory.py, `chatplane up`'s) and
"redis" (routes/redis.py on the session's real redis-server of
tests/services.py, marked `redis`, emptied first). A test calls
`backend.open(ttl_s)` for a store, and `backend.lose_everything()` for the
store a state tier has after losing every route (Redis restarted empty; in
process, a restart).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from chatplane.routes.base import ROUTE_TTL_S, Routes
from chatplane.routes.memory import MemoryRoutes
from chatplane.routes.redis import RedisRoutes
from tests.services import RedisService


class Backend:
    def __init__(self, name: str, make: Callable[[float], Routes],
                 client: aioredis.Redis | None = None) -> None:
        self.name = name
        self._make = make
        self._client = client
        self._ttl_s = ROUTE_TTL_S

    def open(self, ttl_s: float = ROUTE_TTL_S) -> Routes:
        self._ttl_s = ttl_s
        return self._make(ttl_s)

    async def lose_everything(self) -> Routes:
        if self._client is not None:
            await self._client.flushall()
        return self._make(self._ttl_s)  # in memory: a new process's empty store


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield Backend("memory", lambda ttl_s: MemoryRoutes(ttl_s))
        return
    server: RedisService = request.getfixturevalue("redis_server")
    client = aioredis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)
    await client.flushall()
    try:
        yield Backend("redis", lambda ttl_s: RedisRoutes(client, ttl_s), client)
    finally:
        await client.aclose()
