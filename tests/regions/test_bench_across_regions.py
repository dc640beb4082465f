"""The region benches as commands, in short bounded runs on real `chatplane up`
regions: `chatplane bench regions` on regions it starts (with a delay proxy on their
link) and on two running ones, `chatplane bench direct --receiver-url` across two
regions, and `chatplane bench failover`. Each must produce its figures and a clean
checker verdict; no figure is bounded by the wall clock here (docs/benchmarks.md
holds the measured ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatplane.bench import localregions, scrape
from chatplane.bench.localregions import LocalRegion, LocalRegions

pytestmark = pytest.mark.slow

SHORT = ["--pairs", "2", "--rate", "20", "--duration", "2", "--lag-pairs", "4",
         "--lag-rate", "40", "--drain-timeout", "10", "--quiet"]


def _bench(args: list[str], out: Path, timeout_s: float,
           env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", "bench", *args,
                           "--json", str(out)], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def _metric(region: LocalRegion, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200, text
    return sum(v for k, v in scrape.parse(text).items() if k.split("{", 1)[0] == name)


def _assert_figures(pub: dict[str, Any]) -> None:
    assert pub["clean"] and pub["verdict"]["ok"], pub["verdict_summary"]
    assert pub["acked"] > 0 and pub["delivered"] >= pub["acked"]
    assert pub["latency_ms"]["p50_ms"] > 0 and pub["ack_latency_ms"]["p50_ms"] > 0


def test_bench_regions_starts_two_regions_with_a_delayed_link(tmp_path: Path) -> None:
    result, stdout = _bench(["regions", "--rtt-ms", "10", "--durability", "sync", *SHORT],
                            tmp_path / "regions.json", 240)
    assert result["clean"] and result["started_here"] and result["rtt_ms"] == 10
    phases = result["modes"]["sync"]["phases"]
    assert list(phases) == ["local", "replicated", "forwarded", "lag"]
    routes = {p: (v["sender_region"], v["receiver_region"], v["home_region"])
              for p, v in phases.items()}
    assert routes == {"local": ("eu", "eu", "eu"), "replicated": ("eu", "us", "eu"),
                      "forwarded": ("us", "eu", "eu"), "lag": ("eu", "us", "eu")}
    for pub in phases.values():
        _assert_figures(pub)
    # forwarded: each receiver's first send homed its chat, and it got every message
    forwarded = phases["forwarded"]
    assert forwarded["delivered"] == forwarded["acked"] + forwarded["pairs"]
    lag = phases["lag"]["peer_lag"]["us<-eu"]
    assert lag["samples"] > 0 and lag["applied"] > 0  # log entries (one may hold several sends)
    assert set(result["modes"]["sync"]["adds"]) == {"replicated", "forwarded"}
    assert "forwarded adds to local" in stdout


def test_bench_regions_and_bench_direct_on_two_running_regions(tmp_path: Path) -> None:
    key = {"CHATPLANE_TOKEN_SECRET": localregions.KEY}
    with LocalRegions(tmp_path / "regions", durability="async") as regions:
        eu, us = regions["eu"], regions["us"]
        served = _metric(eu, "chatplane_region_sends_served_total")
        result, _ = _bench(["regions", "--url", eu.url, "--peer-url", us.url, "--data-dir",
                            str(eu.data_dir), "--phases", "local,forwarded", *SHORT],
                           tmp_path / "regions.json", 180, key)
        # every timed send of the forwarded phase was served by eu for us
        forwarded = result["modes"]["async"]["phases"]["forwarded"]
        assert _metric(eu, "chatplane_region_sends_served_total") - served >= forwarded["acked"]

        direct, stdout = _bench(["direct", "--url", eu.url, "--receiver-url", us.url,
                                 "--data-dir", str(eu.data_dir), "--pairs", "4", "--rate", "40",
                                 "--duration", "2", "--quiet"], tmp_path / "w1.json", 90, key)
        applied = _metric(us, "chatplane_region_replication_applied_total")
    assert not result["started_here"] and list(result["modes"]) == ["async"]
    for pub in result["modes"]["async"]["phases"].values():
        _assert_figures(pub)
    _assert_figures(direct)
    assert direct["receiver_url"] == us.url
    assert applied >= direct["acked"]  # every message the receivers got was eu's, applied in us
    assert direct["replication_lag"]["samples"] > 0 and "repl lag     max=" in stdout


def test_bench_failover_kills_a_region_and_reports_the_time_and_the_verdict(
        tmp_path: Path) -> None:
    fast = {"CHATPLANE_FAILOVER_AFTER_S": "3", "CHATPLANE_PEER_PROBE_S": "0.2",
            "CHATPLANE_PEER_TIMEOUT_S": "0.5"}
    result, stdout = _bench(["failover", "--runs", "1", "--pairs", "2", "--before-kill", "1.5",
                             "--after-kill", "2"], tmp_path / "failover.json", 240, fast)
    summary, run = result["summary"], result["runs"][0]
    assert summary["ok"] and summary["checker_clean"] and summary["lost"] == 0, summary
    assert summary["failover_s_median"] == run["failover_s"] > 0
    assert run["acked_before"] > 0 and run["acked_after"] > 0
    assert run["takeover"]["lost"] == ["eu"] and run["grants"], run
    assert run["histories_equal"] and run["sequenced_by_eu"] == 0
    assert "failover (kill -9 -> first acked send in the survivor): median" in stdout
