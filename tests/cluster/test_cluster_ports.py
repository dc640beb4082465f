"""`cluster up` hands out loopback ports before its members bind them; another
process (a second pytest-xdist worker starting its own cluster, a client's
ephemeral port) may take one meanwhile. The member that finds its port taken
starts again on new ones, ipconf too unless `--port` fixed its address."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest
import redis

from chatplane.cluster import Cluster
from tests.cluster.conftest import FAST
from tests.services import RedisService

pytestmark = [pytest.mark.redis]


def test_members_whose_ports_were_taken_start_on_others(
        tmp_path: Path, redis_server: RedisService) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushall()
    client.close()
    cluster = Cluster(tmp_path / "cluster", gateways=1, ims=1, states=1,
                      redis_url=redis_server.url, env=FAST)
    squatters = []
    for name in ("ipconf", "gw-1"):
        s = socket.socket()
        s.bind(("127.0.0.1", cluster.members[name].http_port))
        s.listen()
        squatters.append((name, s))
    try:
        cluster.start(timeout_s=60)
        for name, s in squatters:
            assert cluster.members[name].http_port != s.getsockname()[1], name
        with urllib.request.urlopen(cluster.dispatch_url + "/v1/dispatch?uid=u", timeout=5) as r:
            endpoints = json.load(r)["endpoints"]
        assert [e["gateway_id"] for e in endpoints] == ["gw-1"]
    finally:
        cluster.stop()
        for _, s in squatters:
            s.close()
