"""`chatplane bench group --beside-direct`: 1:1 latency without and beside a
busy large group (issue 6: the group must not push 1:1 p99 above 2x).

`chatplane bench direct` runs as its own process (its clients do not share a
loop with the group's senders) three times against the same server: alone
(before the group exists), beside the group while it sends to its members,
all online, and alone again after the members went offline. Each phase reports the 1:1 latency
percentiles, whether the run was clean, the server's CPU, and the load
average; the ratio compares the p99 beside with each p99 alone, all from one
run on one machine.

With `--bound-url`, the same 1:1 run also goes, alone and beside the group,
to a second server on the same machine that the group never touches: its
ratio is what the machine leaves any server (the group's load generator and
fan-out take the cores from everything on them), so the server's own ratio
reads against it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatplane.bench import scrape

# the server's SQLite writer (on /metrics): how long a write waited for its
# group commit, and how long the commits took, averaged over each run
STORAGE_HISTOGRAMS = ("chatplane_storage_write_wait_ms", "chatplane_storage_commit_ms")


@dataclass(frozen=True)
class DirectPlan:
    pairs: int = 20
    rate: float = 200.0
    duration: float = 15.0
    transport: str = "ws"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def storage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    return {"server_" + name.removeprefix("chatplane_") + "_mean": scrape.mean(before, after, name, 3)
            for name in STORAGE_HISTOGRAMS}


async def run_direct(url: str, data_dir: str, plan: DirectPlan) -> dict[str, Any]:
    """One `bench direct` run; its published result, trimmed to what compares."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "direct.json"
        load_before = load_average()
        storage_before = await scrape.read(scrape.admin_url(url))
        began = time.time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatplane.cli", "bench", "direct", "--url", url,
            "--data-dir", data_dir, "--pairs", str(plan.pairs), "--rate", str(plan.rate),
            "--duration", str(plan.duration), "--transport", plan.transport, "--quiet",
            "--json", str(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        if not out.exists():
            raise RuntimeError(f"bench direct failed ({proc.returncode}): {err.decode()[-2000:]}")
        pub = json.loads(out.read_text())
        storage_after = await scrape.read(scrape.admin_url(url))
    latency = pub.get("latency_ms", {})
    return {
        "clean": pub.get("clean"),
        "kept_up": pub.get("kept_up"),
        "acked": pub.get("acked"),
        "p50_ms": latency.get("p50_ms"),
        "p99_ms": latency.get("p99_ms"),
        "max_ms": latency.get("max_ms"),
        "server_cpu_us_per_msg": pub.get("server_cpu_us_per_msg"),
        "bench_loop_lag_p99_ms": pub.get("bench_loop_lag_ms", {}).get("p99_ms"),
        **storage_means(storage_before, storage_after),
        "window": [round(began, 3), round(time.time(), 3)],
        "load_average": [load_before, load_average()],
    }


def p99_ratio(beside: dict[str, Any], alone: dict[str, Any]) -> float | None:
    if not alone.get("p99_ms") or beside.get("p99_ms") is None:
        return None
    return round(beside["p99_ms"] / alone["p99_ms"], 2)


def verdict(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """p99 beside the group over p99 alone (before and after); the must-hold
    is met when beside stays within 2x of both. With the bound phases, also
    the second server's p99 beside the group over its p99 alone."""
    beside = phases["beside_group"]
    ratios = [p99_ratio(beside, phases["alone_before"]), p99_ratio(beside, phases["alone_after"])]
    clean = all(phase.get("clean") for phase in phases.values())
    out = {
        "p99_ratio_vs_before": ratios[0],
        "p99_ratio_vs_after": ratios[1],
        "all_clean": clean,
        "within_2x": clean and all(r is not None and r <= 2.0 for r in ratios),
    }
    if "beside_bound" in phases:
        out["bound_p99_ratio"] = p99_ratio(phases["beside_bound"], phases["bound_alone"])
    return out
