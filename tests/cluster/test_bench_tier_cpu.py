"""`chatplane bench direct --cluster DIR` against a real `chatplane cluster up
--data-dir DIR`, as a person runs the two (docs/benchmarks.md, "`cluster up`:
CPU per message per tier"): the bench finds every process of the deployment
in DIR/cluster.json and reports CPU per message for each tier, which add up
to the server's total."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import cluster_up_process

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TIERS = ["gateway", "im", "state", "ipconf", "redis-server"]


async def test_bench_direct_reports_cpu_per_tier_of_a_cluster(tmp_path: Path) -> None:
    up = cluster_up_process(tmp_path, 2, 2)
    try:
        assert up.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(up.stdout.readline), 60)
        assert line.startswith("chatplane cluster ready"), line
        state = json.loads((tmp_path / "cluster.json").read_text())
        assert sorted(m["tier"] for m in state["members"]) == [
            "gateway", "gateway", "im", "im", "ipconf", "state"]
        assert state["redis"]["pid"] > 0
        out = tmp_path / "w1.json"
        bench = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "chatplane.cli", "bench", "direct", "--cluster", str(tmp_path),
             "--pairs", "5", "--rate", "50", "--duration", "3", "--quiet", "--json", str(out)],
            capture_output=True, text=True, timeout=120)
        assert bench.returncode == 0, bench.stdout + bench.stderr
        result = json.loads(out.read_text())
        assert result["clean"] and result["acked"] > 0
        cost = result["tier_cpu_us_per_msg"]
        assert list(cost["tiers"]) == TIERS
        assert sorted(cost["processes"]) == sorted(
            ["gw-1", "gw-2", "im-1", "im-2", "state-1", "ipconf", "redis"])
        # the tiers add up to the server's CPU (the sum over every process)
        assert sum(cost["tiers_cpu_s"].values()) == pytest.approx(result["server_cpu_s"], abs=0.01)
        assert cost["total"] == pytest.approx(result["server_cpu_s"] * 1e6 / result["acked"], abs=1)
        assert cost["tiers"]["im"] > 0 and cost["tiers"]["gateway"] > 0
        # the table: one row per tier, then the sum
        rows = [r.split()[0] for r in bench.stdout.splitlines()
                if r.split() and r.split()[0] in [*TIERS, "sum"]]
        assert rows == [*TIERS, "sum"], bench.stdout
        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, 30) == 0
        assert not (tmp_path / "cluster.json").exists()  # nothing runs there any more
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(10)


def test_bench_direct_refuses_a_directory_without_a_cluster(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "bench", "direct", "--cluster", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("bench direct: no running cluster in ")
