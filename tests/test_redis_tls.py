"""Redis over TLS (`rediss://`) against a real redis-server started with --tls-port
and client certificates required: the registry works through CHATPLANE_REDIS_TLS_*,
a real `chatplane up` publishes itself there, and a client without a certificate
or trusting another CA gets nothing."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from chatplane.registry.instances import Instances, connect
from chatplane.settings import Tls
from tests.support.certs import TestCa
from tests.support.server import ServerProcess, free_port

pytestmark = pytest.mark.redis


class TlsRedis:
    def __init__(self, workdir: Path) -> None:
        self.ca = TestCa(workdir / "pki", "redis-ca")
        self.server = self.ca.issue("redis", dns=("localhost",), ips=("127.0.0.1",))
        self.client = self.ca.issue("chatplane", dns=("chatplane",))
        self.port = free_port()
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(self.port),
             "--tls-cert-file", str(self.server.cert), "--tls-key-file", str(self.server.key),
             "--tls-ca-cert-file", str(self.ca.path), "--tls-auth-clients", "yes",
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def tls(self) -> Tls:
        return Tls(redis_ca=str(self.ca.path), redis_cert=str(self.client.cert),
                   redis_key=str(self.client.key))

    def env(self) -> dict[str, str]:
        t = self.tls()
        return {"CHATPLANE_REDIS_URL": self.url, "CHATPLANE_REDIS_TLS_CA": t.redis_ca,
                "CHATPLANE_REDIS_TLS_CERT": t.redis_cert, "CHATPLANE_REDIS_TLS_KEY": t.redis_key}


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    redis = TlsRedis(tmp_path)
    yield redis
    redis.proc.terminate()
    redis.proc.wait(10)


async def _ping(url: str, tls: Tls) -> bool:
    client = connect(url, timeout_s=2, tls=tls)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                return bool(await client.ping())
            except RedisConnectionError:
                if time.monotonic() > deadline or tls.redis_cert == "":
                    raise
                await asyncio.sleep(0.1)  # the server may still be starting
    finally:
        await client.aclose()


async def test_the_registry_works_over_rediss(tls_redis: TlsRedis) -> None:
    assert await _ping(tls_redis.url, tls_redis.tls())
    client = connect(tls_redis.url, timeout_s=2, tls=tls_redis.tls())
    try:
        instances = Instances(client, ttl_s=30)
        await instances.publish("gateway", "gw-1", {"ws": "wss://x/ws"})
        assert (await instances.live("gateway"))["gw-1"]["ws"] == "wss://x/ws"
    finally:
        await client.aclose()


async def test_rediss_refuses_a_client_without_cert_or_with_another_ca(
        tls_redis: TlsRedis, tmp_path: Path) -> None:
    assert await _ping(tls_redis.url, tls_redis.tls())  # up, and the right files work
    no_cert = Tls(redis_ca=tls_redis.tls().redis_ca)
    with pytest.raises(RedisConnectionError):
        await _ping(tls_redis.url, no_cert)
    other = TestCa(tmp_path / "other", "other-ca")
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await _ping(tls_redis.url, Tls(redis_ca=str(other.path)))


def test_up_publishes_itself_in_a_tls_redis(tls_redis: TlsRedis, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env=tls_redis.env())
    server.start()
    try:
        with urllib.request.urlopen(server.url + "/v1/dispatch?uid=alice", timeout=5) as resp:
            endpoints = json.load(resp)["endpoints"]
        assert endpoints and endpoints[0]["ws"].startswith("ws://")

        async def published() -> dict[str, dict[str, str]]:
            client = connect(tls_redis.url, timeout_s=2, tls=tls_redis.tls())
            try:
                return await Instances(client, ttl_s=30).live("gateway")
            finally:
                await client.aclose()

        live = asyncio.run(published())
        assert any(fields.get("ws", "").endswith(f":{server.port}/ws") for fields in live.values())
    finally:
        server.stop()
