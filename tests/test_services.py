"""The real-service fixtures of tests/services.py do what they promise."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from tests.services import CqlService, RedisService, _parse_hosts


@pytest.mark.redis
async def test_redis_server_answers_and_restarts_empty(redis_server: RedisService) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.set("chatplane:test", "1")
        assert await client.get("chatplane:test") == b"1"
    finally:
        await client.aclose()
    redis_server.restart_empty()
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.get("chatplane:test") is None
        assert await client.ping()
    finally:
        await client.aclose()
    if not redis_server.external:
        assert redis_server.url.startswith("redis://127.0.0.1:")


@pytest.mark.cql
def test_cql_server_answers(cql_server: CqlService) -> None:
    from cassandra.cluster import Cluster

    cluster = Cluster(list(cql_server.hosts), port=cql_server.port, connect_timeout=10)
    try:
        row = cluster.connect().execute("SELECT release_version FROM system.local").one()
        assert row is not None and row.release_version
    finally:
        cluster.shutdown()


def test_external_host_lists_parse() -> None:
    assert _parse_hosts("10.0.0.1, 10.0.0.2:9043") == (("10.0.0.1", "10.0.0.2"), 9043)
    assert _parse_hosts("scylla") == (("scylla",), 9042)
    with pytest.raises(pytest.UsageError):
        _parse_hosts(" , ")
