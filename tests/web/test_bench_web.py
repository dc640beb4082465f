"""`chatplane bench web` run as a person runs it (its own process, its own
`chatplane up`): the JSON it writes holds every figure, with values that make
sense, and the tab held each message once. Nothing is asserted on time: the
figures are the bench's to report (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web.readiness import skip_unless_ready

skip_unless_ready()

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_bench_web_reports_paint_sizes_and_a_held_conversation(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    done = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "bench", "web", "--messages", "500", "--loads", "2",
         "--json", str(out)], capture_output=True, text=True, timeout=240)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    assert "result        CLEAN" in done.stdout, text
    assert "first paint 2/2" in done.stderr  # progress lines, without --quiet
    result = json.loads(out.read_text())
    assert result["clean"] is True
    assert result["server"] == "own chatplane up"

    paint = result["first_paint"]
    assert paint["loads"] == 2 and len(paint["all_ms"]) == 2
    assert 0 < paint["min_ms"] <= paint["median_ms"] <= paint["max_ms"]

    assets = result["assets"]  # what the page fetched, as served
    assert {"/", "/static/app.js", "/static/app.css"} <= set(assets), assets
    for path, size in assets.items():
        assert 0 < size["gzip_bytes"] < size["bytes"], (path, size)
    app_js = Path(__file__).resolve().parents[2] / "dataplane/chatplane/web/static/app.js"
    assert assets["/static/app.js"]["bytes"] == app_js.stat().st_size

    held = result["conversation"]
    assert held["messages"] == 500
    assert held["delivered"] == held["delivered_distinct"] == 500  # each once
    assert held["listed"] == 500 and held["listed_in_seq_order"]
    assert held["rows_contiguous"] and held["bottom_row"] == 500
    assert 0 < held["rows_max"] < 500  # virtualized: a window, not the whole list
    frames = held["scroll_frame_ms"]
    assert 0 < frames["p50"] <= frames["p95"] <= frames["max"]
    assert held["seed_s"] > 0 and 0 < held["sign_in_s"] <= held["sync_s"]

    machine = result["machine"]
    assert machine["cpus"] >= 1 and machine["chromium"]
    assert len(machine["load_average_before"]) == len(machine["load_average_after"]) == 3
