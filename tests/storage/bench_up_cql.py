"""`chatplane up --storage scylla` against SQLite, rung by rung, in one run.

    python -m tests.storage.bench_up_cql --rates 250,500,1000 --pairs 20 --duration 15

Starts a one-node Cassandra (scripts/cql/run-cassandra, as the tests do), then
for each rate and backend a fresh `chatplane up` (a new keyspace or data dir)
and `chatplane bench direct` against it, and reads the server's /metrics before
and after: CQL requests, statements and conditional writes per stored message.
Prints one JSON line per run. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from chatplane.bench import scrape
from tests.services import CqlService, free_port

COUNTERS = ("chatplane_cql_requests_total", "chatplane_cql_statements_total",
            "chatplane_cql_conditional_total", "chatplane_storage_appends_total")


def counters(admin: str) -> dict[str, float]:
    """The counters above (summed), and requests by statement kind ("kind:...")."""
    text = urllib.request.urlopen(f"{admin}/metrics", timeout=10).read().decode()
    out = dict.fromkeys(COUNTERS, 0.0)
    for key, value in scrape.parse(text).items():
        name, _, labels = key.partition("{")
        if name in out:
            out[name] += value
            if name == "chatplane_cql_requests_total":
                out["kind:" + labels.removeprefix('kind="').removesuffix('"}')] = value
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(admin: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(f"{admin}/readyz", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("server not ready")


def one_run(backend: str, rate: int, args: argparse.Namespace,
                  cql: CqlService | None) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix=f"up-{backend}-")
    port = free_port()
    admin_port = free_port()
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", data_dir,
           "--port", str(port), "--tcp-port", str(free_port()), "--admin-port",
           str(admin_port), "--storage", backend]  # the lean generator speaks raw TCP
    if backend == "scylla":
        assert cql is not None
        keyspace = f"bench_{uuid.uuid4().hex[:10]}"
        hosts = ",".join(cql.contact_points)
        for attempt in range(3):  # a node just started may time out its first Paxos rounds
            migrated = subprocess.run([sys.executable, "-m", "chatplane.cli", "storage",
                                       "migrate", "--cql-hosts", hosts, "--keyspace", keyspace],
                                      stdout=subprocess.DEVNULL)
            if migrated.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError("storage migrate failed three times")
        cmd += ["--cql-hosts", hosts, "--keyspace", keyspace]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        wait_ready(admin)
        before = counters(admin)
        node_pid = cql.pid if cql is not None and backend == "scylla" else None
        node_before = cpu_seconds(node_pid) if node_pid else 0.0
        out = Path(data_dir) / "w1.json"
        began = time.time()
        subprocess.run([sys.executable, "-m", "chatplane.cli", "bench", "direct",
                        "--url", f"http://127.0.0.1:{port}", "--data-dir", data_dir,
                        "--pairs", str(args.pairs), "--rate", str(rate),
                        "--duration", str(args.duration), "--quiet", "--json", str(out)],
                       timeout=args.duration + 120, stdout=subprocess.DEVNULL)
        after = counters(admin)
        node_cpu = cpu_seconds(node_pid) - node_before if node_pid else None
        if not out.exists():
            raise SystemExit(f"bench direct wrote no result ({backend} at {rate}/s): "
                             "see its error above")
        pub = json.loads(out.read_text())
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    stored = after["chatplane_storage_appends_total"] - before["chatplane_storage_appends_total"]
    latency = pub.get("latency_ms", {})

    def per_message(name: str) -> float | None:
        return round((after[name] - before[name]) / stored, 4) if stored else None

    return {
        "backend": backend, "rate": rate, "pairs": args.pairs, "duration_s": args.duration,
        "clean": pub.get("clean"), "kept_up": pub.get("kept_up"), "acked": pub.get("acked"),
        "p50_ms": latency.get("p50_ms"), "p99_ms": latency.get("p99_ms"),
        "server_cpu_us_per_msg": pub.get("server_cpu_us_per_msg"),
        # the CQL node's own CPU over the bench run, per acked message
        "node_cpu_us_per_msg": (round(node_cpu * 1e6 / pub["acked"])
                                if node_cpu is not None and pub.get("acked") else None),
        "requests_per_msg": per_message("chatplane_cql_requests_total"),
        "statements_per_msg": per_message("chatplane_cql_statements_total"),
        "conditional_per_msg": per_message("chatplane_cql_conditional_total"),
        "requests_per_msg_by_kind": {
            name[5:]: round((value - before.get(name, 0.0)) / stored, 3)
            for name, value in after.items() if name.startswith("kind:") and stored
            and value > before.get(name, 0.0)},
        "stored": stored, "window": [round(began), round(time.time())],
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="250,500,1000")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--backends", default="scylla,sqlite")
    args = parser.parse_args()
    backends = args.backends.split(",")
    cql = None
    if "scylla" in backends:
        cql = CqlService(Path(tempfile.mkdtemp(prefix="bench-cql-")))
        cql.start()
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            for backend in backends:
                print(json.dumps(one_run(backend, rate, args, cql)), flush=True)
    finally:
        if cql is not None:
            cql.stop()


if __name__ == "__main__":
    main()
