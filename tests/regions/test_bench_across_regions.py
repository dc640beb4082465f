"""`chatplane bench direct --receiver-url` across two real `chatplane up` regions peered
through the delay proxy (tests/tools/regionbench.py, 5 ms each way): the senders log in
at eu, the receivers at us, every message crosses by replication, and the bench's
checker finds the run clean; the replication lag was sampled at us's /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from chatplane.bench import scrape
from tests.tools import regionbench

pytestmark = pytest.mark.slow


def _applied_from_eu(url: str) -> float:
    with urllib.request.urlopen(scrape.admin_url(url) + "/metrics", timeout=5) as resp:
        found = scrape.parse(resp.read().decode())
    return found.get('chatplane_region_replication_applied_total{peer="eu"}', 0.0)


def test_bench_direct_with_receivers_in_the_other_region(tmp_path: Path) -> None:
    with regionbench.regions(tmp_path, delay_ms=5, mode="sync") as urls:
        eu, us = urls["eu"], urls["us"]
        out = tmp_path / "w1.json"
        done = subprocess.run(
            [sys.executable, "-m", "chatplane.cli", "bench", "direct", "--url", eu["url"],
             "--receiver-url", us["url"], "--data-dir", eu["data_dir"], "--pairs", "4",
             "--rate", "40", "--duration", "2", "--json", str(out), "--quiet"],
            env={**os.environ, "CHATPLANE_TOKEN_SECRET": regionbench.KEY},
            capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(out.read_text())
        applied = _applied_from_eu(us["url"])
    assert result["clean"] and result["verdict"]["ok"], result["verdict_summary"]
    assert result["receiver_url"] == us["url"]
    assert result["acked"] > 0 and result["delivered"] == result["acked"]
    # every message the receivers got was eu's, applied in us
    assert applied >= result["acked"]
    assert result["replication_lag"]["samples"] > 0
    assert "repl lag     max=" in done.stdout
