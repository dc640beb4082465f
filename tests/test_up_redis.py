"""`chatplane up --redis-url`: the single process publishes itself and its
device routes in the cluster's Redis registry, and losing Redis (stopped,
restarted empty) costs nothing but those entries, which come back by
themselves. Real `chatplane up` process, real redis-server, real SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.services import RedisService
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SERVER_ID = "up-redis-test"


def _registry(url: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The node's registry entry and the routes of alice and bob."""
    client = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
    try:
        entry = client.hgetall(f"cp:gateway:{SERVER_ID}")
        routes = {u: client.hgetall(f"cp:route:{u}") for u in ("alice", "bob")}
        return entry, routes
    finally:
        client.close()


async def _eventually(check, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        result = await asyncio.to_thread(check)
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.2)


def _readyz(base_url: str) -> dict[str, object]:
    with urllib.request.urlopen(base_url + "/readyz", timeout=5) as response:
        return dict(json.load(response))


async def _exchange(alice: Client, bob: Client, conversation: str, text: str) -> None:
    ack = await asyncio.wait_for(alice.send_text(conversation, text), 10)
    async for message in bob.messages():
        if message.seq == ack.seq:
            assert message.text == text
            return


async def test_up_publishes_and_rebuilds_its_registry(redis_server: RedisService,
                                                     tmp_path: Path) -> None:
    if redis_server.external:
        pytest.skip("stops and restarts the redis-server")
    redis.Redis.from_url(redis_server.url, socket_timeout=5).flushall()
    server = ServerProcess(tmp_path, env={"CHATPLANE_SERVER_ID": SERVER_ID},
                           extra_args=["--redis-url", redis_server.url])
    server.start()
    signer = TokenSigner.from_data_dir(tmp_path)
    alice = Client(server.url, signer.mint("alice", "phone"), transport="tcp")
    bob = Client(server.url, signer.mint("bob", "laptop"))
    try:
        await alice.connect()
        await bob.connect()
        conversation = await alice.direct("bob")

        def both_registered() -> bool:
            entry, routes = _registry(redis_server.url)
            return (entry.get("connections") == "2" and "phone" in routes["alice"]
                    and "laptop" in routes["bob"])

        assert await _eventually(both_registered), _registry(redis_server.url)
        entry, routes = _registry(redis_server.url)
        assert entry["ws"].startswith("ws://127.0.0.1:") and entry["draining"] == "0"
        assert routes["alice"]["phone"].startswith(f"{SERVER_ID}|")

        # Redis gone: chat goes on, the node stays ready and says so
        redis_server.stop()
        await _exchange(alice, bob, conversation, "while redis is down")
        details = await _eventually(
            lambda: (_readyz(server.url).get("registry") == "unreachable") and _readyz(server.url))
        assert details, "readyz never reported the registry unreachable"

        # back empty (a restart without persistence): everything comes back
        redis_server.start()
        assert await _eventually(both_registered), _registry(redis_server.url)
        assert await _eventually(lambda: _readyz(server.url).get("registry") == "ok")
        await _exchange(alice, bob, conversation, "after redis came back")

        # FLUSHALL under a running node: the same
        redis.Redis.from_url(redis_server.url, socket_timeout=5).flushall()
        assert await _eventually(both_registered), _registry(redis_server.url)

        # a device that leaves takes its route with it
        await bob.close()
        assert await _eventually(lambda: not _registry(redis_server.url)[1]["bob"])
        assert "phone" in _registry(redis_server.url)[1]["alice"]
    finally:
        await alice.close()
        await bob.close()
        server.stop()
    # a clean stop removes the node's entry at once (a killed one expires by TTL)
    assert _registry(redis_server.url)[0] == {}


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:6379", "redis_url must be redis://"),
    ("redis://127.0.0.1:1/0", "Redis at redis://127.0.0.1:1/0 unreachable"),
])
def test_bad_redis_configuration_is_one_line(tmp_path: Path, url: str, says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path), "--port", "0",
         "--redis-url", url],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
