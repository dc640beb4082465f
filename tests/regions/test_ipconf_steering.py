"""The `chatplane ipconf` tier (a region's dispatch pods) lists the peer regions'
gateways by what its probes of them say: reachable first, unreachable last but listed
(ipconf/probes.py), as `chatplane up` does from its region link. A real ipconf process,
a real `chatplane up` as the reachable peer's gateway, a closed port as the lost one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.services import RedisService
from tests.support.regions import FAST_PROBES, wait_for
from tests.support.server import ServerProcess, free_port

pytestmark = [pytest.mark.redis]


def _dispatch(url: str) -> Any:
    with urllib.request.urlopen(url + "/v1/dispatch?uid=alice", timeout=5) as resp:
        return json.load(resp)


def test_ipconf_lists_the_reachable_peer_region_before_the_lost_one(
        tmp_path: Path, server: ServerProcess, redis_server: RedisService) -> None:
    lost_port = free_port()  # nothing listens there
    peers = [  # the lost region first in the list: only the probes can reorder them
        {"name": "lost", "endpoint": f"127.0.0.1:{free_port()}", "datacenter": "lost",
         "ws": f"ws://127.0.0.1:{lost_port}/ws"},
        {"name": "near", "endpoint": f"127.0.0.1:{free_port()}", "datacenter": "near",
         "ws": f"ws://127.0.0.1:{server.port}/ws"},
    ]
    port, admin = free_port(), free_port()
    env = {**os.environ, **FAST_PROBES, "CHATPLANE_REGION": "eu",
           "CHATPLANE_ADMIN_PORT": str(admin), "CHATPLANE_PEERS": json.dumps(peers)}
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/10"  # an empty registry: no gateways
    log = (tmp_path / "ipconf.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatplane.cli", "ipconf", "--port", str(port),
         "--redis-url", redis_url], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def steered() -> list[str] | None:
            try:
                regions = [e.get("region") for e in _dispatch(url)["endpoints"]]
            except OSError:
                return None  # not serving yet
            return regions if regions == ["near", "lost"] else None

        wait_for(steered, 30, "ipconf lists near before lost")
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        failures = [line for line in text.splitlines()
                    if line.startswith("chatplane_dispatch_peer_probe_failures_total ")]
        assert failures and float(failures[0].split()[1]) > 0, failures  # the lost one
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
