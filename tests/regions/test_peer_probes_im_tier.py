"""The im tier as its own process (`chatplane im`, what a region's im pods run) serves the
cross-region link on its gRPC port beside `Im`, and reports its peers on its HTTP port."""

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
from tests.support.regions import FAST_PROBES, SHARED_KEY, wait_for
from tests.support.server import free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _start_im(tmp_path: Path, region: str, http: int, grpc: int, admin: int,
              peer: tuple[str, int], redis_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, **FAST_PROBES, "CHATPLANE_REGION": region,
           "CHATPLANE_ADMIN_PORT": str(admin),
           "CHATPLANE_TOKEN_SECRET": SHARED_KEY,
           "CHATPLANE_PEERS": json.dumps([{"name": peer[0], "endpoint": f"127.0.0.1:{peer[1]}",
                                           "datacenter": peer[0]}])}
    log = (tmp_path / f"im-{region}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatplane.cli", "im", "--id", f"im-{region}", "--port", str(http),
         "--grpc-port", str(grpc), "--redis-url", redis_url, "--storage", "sqlite",
         "--data-dir", str(tmp_path / region)],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc


def test_im_tier_regions_see_each_other(tmp_path: Path, redis_server: RedisService) -> None:
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/9"  # away from other tests' registry
    ports = {r: (free_port(), free_port(), free_port()) for r in ("eu", "us")}
    procs = [_start_im(tmp_path, "eu", *ports["eu"], ("us", ports["us"][1]), redis_url),
             _start_im(tmp_path, "us", *ports["us"], ("eu", ports["eu"][1]), redis_url)]
    try:
        for me, other in (("eu", "us"), ("us", "eu")):
            url = f"http://127.0.0.1:{ports[me][2]}"  # the admin port: /v1/peers

            def seen(url: str = url, other: str = other) -> dict[str, Any] | None:
                try:
                    report = _get(url + "/v1/peers")
                except OSError:
                    return None  # not serving yet
                view = report["peers"][0]
                return view if view["name"] == other and view["ok"] else None

            view = wait_for(seen, 30, f"im {me} sees {other}")
            assert view["last_answer"]["server_id"] == f"im-{other}"
            assert _get(url + "/readyz")["peers"] == {other: True}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
