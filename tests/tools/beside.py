"""1:1 latency alone and beside a busy large group (issue 6), a harness.

Not part of the product: it was written for one investigation and drives the
product's two benches as processes. `chatplane bench direct` runs alone
(before the group exists), beside the group while it sends to its members,
all online, and alone again after the members went offline; the group is a
`chatplane bench group` process started between, and the beside run starts
`--warmup` seconds after it prints its "sending" line. Each phase reports the
1:1 latency percentiles, whether the run was clean, the server's CPU and the
load average; the ratio compares the p99 beside with each p99 alone, all from
one run on one machine.

With `--bound-url`, the same 1:1 run also goes, alone and beside the group,
to a second server on the same machine that the group never touches: its
ratio is what the machine leaves any server (the group's load generator and
fan-out take the cores from everything on them), so the server's own ratio
reads against it.

    python3 -m tests.tools.beside --url http://127.0.0.1:8080 --data-dir D \
        [--bound-url http://127.0.0.1:8090 --bound-data-dir D2] \
        -- --crowd go --members 10000 --interval-ms 10 --crowd-nice 19

(the options after `--` go to `chatplane bench group`; the group is given
enough messages to outlast the beside runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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
STORAGE_HISTOGRAMS = ("chatplane_storage_write_wait_seconds", "chatplane_storage_commit_seconds")


@dataclass(frozen=True)
class DirectPlan:
    pairs: int = 20
    rate: float = 200.0
    duration: float = 15.0
    transport: str = "ws"
    client: str = "sdk"  # the figures of issue 6 were taken through the SDK


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def storage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    # in seconds on /metrics; the comparison keeps milliseconds
    return {"server_" + name.removeprefix("chatplane_").removesuffix("_seconds") + "_ms_mean":
            scrape.mean(before, after, name, 3, scale=1000) for name in STORAGE_HISTOGRAMS}


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
            "--duration", str(plan.duration), "--transport", plan.transport,
            "--client", plan.client, "--quiet",
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


WARMUP_S = 2.0  # the group sends this long before the beside run starts
MARGIN_S = 10.0  # ... and goes on this long past each beside run (its setup and drain)


async def _group(url: str, data_dir: str, group_args: list[str], messages: int,
                 out: Path) -> asyncio.subprocess.Process:
    """`chatplane bench group` as a process; returns once it says it is sending."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatplane.cli", "bench", "group", "--url", url,
        "--data-dir", data_dir, "--messages", str(messages), *group_args, "--json", str(out),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    async for line in proc.stderr:
        if line.startswith(b"sending"):
            return proc
    raise RuntimeError(f"bench group ended before sending (exit {await proc.wait()})")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = DirectPlan(args.direct_pairs, args.direct_rate, args.direct_duration)
    bound = args.bound_url.rstrip("/")
    phases: dict[str, dict[str, Any]] = {}
    phases["alone_before"] = await run_direct(args.url, args.data_dir, plan)
    if bound:
        phases["bound_alone"] = await run_direct(bound, args.bound_data_dir, plan)
    runs = 2 if bound else 1
    interval_ms = float(args.interval_ms)
    messages = math.ceil((WARMUP_S + runs * (plan.duration + MARGIN_S)) * 1000 / interval_ms)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "group.json"
        group = await _group(args.url, args.data_dir,
                             [*args.group_args, "--interval-ms", str(interval_ms)], messages, out)
        await asyncio.sleep(WARMUP_S)
        phases["beside_group"] = await run_direct(args.url, args.data_dir, plan)
        if bound:
            phases["beside_bound"] = await run_direct(bound, args.bound_data_dir, plan)
        await group.communicate()
        w2 = json.loads(out.read_text()) if out.exists() else {}
    phases["alone_after"] = await run_direct(args.url, args.data_dir, plan)
    return {"plan": vars(plan), "group": {k: v for k, v in w2.items() if k != "crowd_stats"},
            **phases, **verdict(phases)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.tools.beside", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bound-url", default="", metavar="URL",
                        help="a second server on this machine, not in the group")
    parser.add_argument("--bound-data-dir", default="", metavar="DIR")
    parser.add_argument("--interval-ms", type=float, default=10.0,
                        help="the group's send interval (default 10: 100 msgs/s)")
    parser.add_argument("--direct-pairs", type=int, default=20)
    parser.add_argument("--direct-rate", type=float, default=200.0)
    parser.add_argument("--direct-duration", type=float, default=15.0)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("group_args", nargs="*", help="after --: options of bench group")
    args = parser.parse_args(argv)
    if args.bound_url and not args.bound_data_dir:
        parser.error("--bound-url needs --bound-data-dir")
    if args.interval_ms <= 0:
        parser.error("--interval-ms must be positive")
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if result["all_clean"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
