"""Two real `chatplane up` regions, each in the other's CHATPLANE_PEERS: they see each
other over the cross-region link, notice a kill -9 and a restart, and tell a peer that
signs tokens with another key from one that does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.regions import RegionProcess, two_regions, wait_for
from tests.support.server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    with two_regions(tmp_path) as pair:
        yield pair


def _seen(region: RegionProcess, peer: str) -> dict[str, Any] | None:
    view = region.peers()[peer]
    return view if view["ok"] else None


def _unreachable(region: RegionProcess, peer: str) -> dict[str, Any] | None:
    view = region.peers()[peer]
    return view if not view["reachable"] else None


def _gauge(region: RegionProcess, name: str, peer: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200
    line = next(x for x in text.splitlines() if x.startswith(f'{name}{{peer="{peer}"}}'))
    return float(line.rsplit(" ", 1)[1])


def test_regions_see_each_other_then_a_kill_and_a_restart(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    eu, us = regions
    for me, other in ((eu, us), (us, eu)):
        view = wait_for(lambda m=me, o=other: _seen(m, o.name), 20, f"{me.name} sees {other.name}")
        assert view["endpoint"] == other.endpoint and view["error"] == ""
        assert view["last_answer"]["region"] == other.name
        assert view["last_answer"]["key_match"] is True
        assert view["rtt_ms"] is not None and view["last_ok_s_ago"] is not None
        # the peer's own probes reached us too
        assert wait_for(lambda m=me, o=other: m.peers()[o.name]["heard_from_s_ago"] is not None,
                        10, "a Hello from the peer")
        assert _gauge(me, "chatplane_peer_reachable", other.name) == 1
        status, text = me.get("/readyz")
        assert status == 200 and f'"{other.name}": true' in text

    us.kill()
    down = wait_for(lambda: _unreachable(eu, "us"), 20, "eu notices us is gone")
    assert not down["ok"] and "UNAVAILABLE" in down["error"]
    assert down["failures"] >= 1
    assert _gauge(eu, "chatplane_peer_reachable", "us") == 0
    status, text = eu.get("/readyz")
    assert status == 200, text  # a region keeps serving without its peers
    assert '"us": false' in text

    us.start()
    back = wait_for(lambda: _seen(eu, "us"), 20, "eu sees us again")
    assert back["reachable"] and back["error"] == "" and back["failures"] >= 1
    assert _gauge(eu, "chatplane_peer_reachable", "us") == 1


def test_a_peer_with_another_token_key_is_reported_as_such(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    eu, us = regions
    wait_for(lambda: _seen(eu, "us"), 20, "eu sees us")
    us.stop()
    us.set_key("another-key-than-the-other-regions")
    us.start()

    def mismatch(region: RegionProcess, peer: str) -> dict[str, Any] | None:
        view = region.peers()[peer]
        answer = view["last_answer"] or {}
        return view if view["reachable"] and answer.get("key_match") is False else None

    for me, other in ((eu, "us"), (us, "eu")):
        view = wait_for(lambda m=me, o=other: mismatch(m, o), 20, f"{me.name}: key mismatch")
        assert not view["ok"]
        assert view["error"] == "signs tokens with a different key"
        assert _gauge(me, "chatplane_peer_reachable", other) == 1
        assert _gauge(me, "chatplane_peer_ok", other) == 0


def test_a_peer_answering_as_another_region_is_not_ok(tmp_path: Path) -> None:
    eu = RegionProcess(tmp_path / "eu", "eu")
    impostor = RegionProcess(tmp_path / "ap", "ap")
    eu.set_peers([{"name": "us", "endpoint": impostor.endpoint, "datacenter": "us"}])
    # the same through the flags (they win over the environment)
    impostor.extra_args += ["--region", "ap", "--grpc-port", str(impostor.grpc_port), "--peers",
                            json.dumps([{"name": "eu", "endpoint": eu.endpoint}])]
    impostor.env.pop("CHATPLANE_GRPC_PORT")
    eu.start()
    impostor.start()
    try:
        view = wait_for(lambda: (v := eu.peers()["us"])["reachable"] and v, 20, "an answer")
        assert not view["ok"] and "answers as region 'ap', not 'us'" in view["error"]
        # eu lists no region "ap": its Hello is refused (Region.* only from listed peers)
        seen = wait_for(lambda: (v := impostor.peers()["eu"])["failures"] and v, 20, "ap refused")
        assert not seen["ok"] and seen["error"].startswith("PERMISSION_DENIED"), seen
    finally:
        eu.stop()
        impostor.stop()


@pytest.mark.parametrize("peers, says", [
    ('[{"name": "us", "endpoint": "us-im"}]', "entry 0 (us): endpoint 'us-im' is not host:port"),
    ('{"us": "h:1"}', "expected a JSON list of {name, endpoint, datacenter}"),
    ('[{"name": "eu", "endpoint": "h:1"}]', "'eu' is this region itself"),
    ("us=h:1", "not JSON"),
])
def test_a_bad_peer_list_stops_the_start_with_one_line(tmp_path: Path, peers: str,
                                                       says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path), "--port", "0"],
        env={"CHATPLANE_REGION": "eu", "CHATPLANE_PEERS": peers, "PATH": "/usr/bin:/bin",
             "PYTHONPATH": os.environ.get("PYTHONPATH", "")},  # the tree under test
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "CHATPLANE_PEERS" in result.stderr and says in result.stderr


def test_dispatch_offers_the_region_it_reaches_before_one_it_cannot(tmp_path: Path) -> None:
    """eu lists ap first and us second, each with a public gateway; ap does not answer
    (nothing listens at its endpoint), us does: eu's dispatch offers us's gateway
    before ap's, and ap's still (a client may reach it when eu cannot)."""
    eu = RegionProcess(tmp_path / "eu", "eu")
    us = RegionProcess(tmp_path / "us", "us")
    dead = free_port()
    eu.set_peers([{"name": "ap", "endpoint": f"127.0.0.1:{dead}", "ws": "ws://ap.example/ws"},
                  {"name": "us", "endpoint": us.endpoint, "ws": "ws://us.example/ws"}])
    us.set_peers([{"name": "eu", "endpoint": eu.endpoint}])
    try:
        us.start()
        eu.start()
        wait_for(lambda: _seen(eu, "us") and _unreachable(eu, "ap"), 20, "us up, ap down")

        def fallbacks() -> list[str]:
            with urllib.request.urlopen(f"{eu.url}/v1/dispatch?uid=alice", timeout=5) as resp:
                endpoints = json.loads(resp.read())["endpoints"]
            return [e["gateway_id"] for e in endpoints if e["gateway_id"].startswith("region:")]

        assert fallbacks() == ["region:us", "region:ap"]
        us.kill()
        wait_for(lambda: _unreachable(eu, "us"), 20, "us down")
        assert fallbacks() == ["region:ap", "region:us"]  # neither answers: the list's order
    finally:
        eu.stop()
        us.stop()
