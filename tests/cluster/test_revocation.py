"""Token revocation across a real `cluster up` deployment: the im tier's admin
API stores a revocation and copies it to Redis, the gateway tier (separate
processes) learns it within session_check_s and closes only the revoked
device; gateways started after Redis lost its keys still refuse the token
(the im tier copies storage back to Redis)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
import redis

from chatplane import revocations
from chatplane.client import Client
from chatplane.protocol.errors import ErrorCode, RequestError
from tests.cluster.conftest import ClusterFactory
from tests.services import RedisService
from tests.support.traffic import ended

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def revoke(url: str, secret: str, body: dict[str, str]) -> dict[str, object]:
    request = urllib.request.Request(
        url + "/v1/admin/revocations", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(json.load(response))



async def test_a_revoked_device_is_closed_by_the_gateway_tier(
        make_cluster: ClusterFactory, redis_server: RedisService) -> None:
    cluster = make_cluster(gateways=2, ims=1, states=1)
    signer = cluster.signer
    phone = Client(cluster.dispatch_url, signer.mint("alice", "phone"))
    laptop = Client(cluster.dispatch_url, signer.mint("alice", "laptop"))
    bob = Client(cluster.dispatch_url, signer.mint("bob", "phone"))
    for c in (phone, laptop, bob):
        await c.connect()
    chat = await bob.direct("alice")
    began = time.monotonic()
    await asyncio.to_thread(revoke, cluster.members["im-1"].admin_url, cluster.admin_secret,
                            {"user_id": "alice", "device_id": "phone"})
    error = await ended(phone, 5.0)
    took = time.monotonic() - began
    assert error.code == ErrorCode.TOKEN_REVOKED and took < 5.0, (error, took)
    ack = await bob.send_text(chat, "laptop still on?")
    async for message in laptop.messages():
        if message.seq == ack.seq:
            break
    # Redis loses everything; gateways started afterwards still refuse the token
    copy = redis.Redis.from_url(redis_server.url)
    copy.flushall()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not copy.hlen(revocations.REDIS_KEY):  # copied back every session_check_s / 2
        assert loop.time() < deadline, "the im tier did not copy the revocations back"
        await asyncio.sleep(0.1)
    copy.close()
    for name in cluster.names("gateway"):
        cluster.kill(name)
        cluster.start_member(name)
    again = Client(cluster.dispatch_url, phone.token)
    with pytest.raises(RequestError) as refused:
        await again.connect(timeout_s=20)
    assert refused.value.code == ErrorCode.TOKEN_REVOKED
    for c in (phone, laptop, bob):
        await c.close()
    print(f"gateway tier closed the revoked device in {took * 1000:.0f} ms")
