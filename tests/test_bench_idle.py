"""`chatplane bench idle` stops by itself when its server dies under it: it closes its
clients on every path (a run whose server was killed mid-hold once spun for 100 minutes,
its 5,000 clients retrying a dead address)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.server import ServerProcess


def test_bench_idle_ends_in_one_line_when_its_server_dies(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    bench = subprocess.Popen(
        [sys.executable, "-m", "chatplane.cli", "bench", "idle", "--url", server.url,
         "--data-dir", str(server.data_dir), "--connections", "300", "--rate", "300",
         "--hold", "30", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while "chatplane_connections" not in _metrics(server) or _connections(server) < 300:
            assert time.monotonic() < deadline, "the bench did not connect"
            time.sleep(0.2)
        server.kill()  # mid-hold
        _, err = bench.communicate(timeout=60)  # the hold ends, its scrape fails
        assert bench.returncode == 1, err
        assert err.strip().startswith("bench idle:") and len(err.strip().splitlines()) == 1, err
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        server.stop()


def _metrics(server: ServerProcess) -> str:
    try:
        with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def _connections(server: ServerProcess) -> float:
    line = next(x for x in _metrics(server).splitlines() if x.startswith("chatplane_connections "))
    return float(line.rsplit(" ", 1)[1])
