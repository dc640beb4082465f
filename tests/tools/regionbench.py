"""Cross-region W1 with injected round-trip time (issue 17's targets), one command.

Not part of the product: it starts, for each delay and durability mode, two
`chatplane up` regions (eu, us; each its own data dir, a shared token key) whose
peer endpoints point at two delay proxies (`tests/tools/delayproxy.py`, D ms
each way, so 2 D of round-trip time on the cross-region gRPC link only; clients
talk to their own region directly), waits until each sees the other, runs
`chatplane bench direct --url EU --receiver-url US` once per rate (senders in eu,
receivers in us; each chat is opened and first written in eu, so it is homed in
eu and every message crosses to us by replication), and stops everything. Each
run's line gives the load average before it; the JSON of every run goes to
`--out`.

    python3 -m tests.tools.regionbench --delays 25,0 --modes sync,async \\
        --rates 200,1000 --pairs 50 --duration 20 --out /tmp/regionbench

Every process it starts dies with it (PR_SET_PDEATHSIG) and the whole run is
bounded by `--max-seconds`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chatplane.bench import procstat
from chatplane.cluster import free_port, free_port_pair

KEY = "a-token-key-both-bench-regions-share"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Proc:
    """A child process whose output is kept; `wait_line` waits for a line with a word."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.seen = threading.Event()
        self.word = ""
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, preexec_fn=_die_with_parent)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.word and self.word in line:
                self.seen.set()

    def wait_line(self, word: str, timeout_s: float) -> None:
        self.word = word
        if any(word in line for line in self.lines):
            return
        deadline = time.monotonic() + timeout_s
        while not self.seen.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.lines[-20:])
                raise RuntimeError(f"{self.proc.args!r} never printed {word!r}:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _peers_ok(admin_url: str, peer: str) -> bool:
    try:
        with urllib.request.urlopen(admin_url + "/v1/peers", timeout=2) as resp:
            peers = {p["name"]: p for p in json.loads(resp.read())["peers"]}
    except (OSError, ValueError):
        return False
    return bool(peers.get(peer, {}).get("ok"))


@contextlib.contextmanager
def regions(base: Path, delay_ms: float, mode: str) -> Iterator[dict[str, Any]]:
    """eu and us peered through one delay proxy per direction; yields their URLs."""
    names = ("eu", "us")
    ports = {n: (free_port_pair(), free_port(), free_port(), free_port()) for n in names}
    procs: list[Proc] = []
    env = {**os.environ, "CHATPLANE_TOKEN_SECRET": KEY, "CHATPLANE_REGION_DURABILITY": mode}
    try:
        for n in names:  # the proxy that n's peer dials to reach n
            http, tcp, grpc, proxy = ports[n]
            p = Proc([sys.executable, "-m", "tests.tools.delayproxy",
                      "--listen", f"127.0.0.1:{proxy}", "--target", f"127.0.0.1:{grpc}",
                      "--delay-ms", str(delay_ms), "--max-seconds", "3600"], env)
            procs.append(p)
            p.wait_line("delayproxy", 20)
        for n in names:
            http, tcp, grpc, _ = ports[n]
            other = "us" if n == "eu" else "eu"
            peers = [{"name": other, "endpoint": f"127.0.0.1:{ports[other][3]}",
                      "datacenter": f"dc-{other}"}]
            p = Proc([sys.executable, "-m", "chatplane.cli", "up",
                      "--data-dir", str(base / n), "--host", "127.0.0.1",
                      "--port", str(http), "--tcp-port", str(tcp)],
                     {**env, "CHATPLANE_REGION": n, "CHATPLANE_GRPC_PORT": str(grpc),
                      "CHATPLANE_ADMIN_PORT": str(http + 1), "CHATPLANE_PEERS": json.dumps(peers)})
            procs.append(p)
            p.wait_line("ready", 60)
        deadline = time.monotonic() + 60
        for n in names:
            other = "us" if n == "eu" else "eu"
            while not _peers_ok(f"http://127.0.0.1:{ports[n][0] + 1}", other):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{n} never saw {other} through the proxy")
                time.sleep(0.2)
        # procs: the two proxies (to eu, to us), then the two regions (eu, us)
        yield {n: {"url": f"http://127.0.0.1:{ports[n][0]}", "data_dir": str(base / n),
                   "pid": str(procs[2 + i].proc.pid), "proxy_pid": str(procs[i].proc.pid)}
               for i, n in enumerate(names)}
    finally:
        for p in reversed(procs):
            p.stop()


def bench(eu: dict[str, str], us: dict[str, str], rate: float, args: argparse.Namespace,
          out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "chatplane.cli", "bench", "direct",
           "--url", eu["url"], "--receiver-url", us["url"], "--data-dir", eu["data_dir"],
           "--pairs", str(args.pairs), "--rate", str(rate), "--duration", str(args.duration),
           "--json", str(out), "--quiet"]
    pids = {f"{n}_{kind}": int(r[key]) for n, r in (("eu", eu), ("us", us))
            for kind, key in (("cpu_s", "pid"), ("proxy_cpu_s", "proxy_pid"))}
    cpu0 = {k: procstat.cpu_seconds(pid) or 0.0 for k, pid in pids.items()}
    load = _loadavg()
    done = subprocess.run(cmd, env={**os.environ, "CHATPLANE_TOKEN_SECRET": KEY},
                          capture_output=True, text=True, preexec_fn=_die_with_parent,
                          timeout=args.duration + 120)
    print(done.stdout, flush=True)
    if done.returncode not in (0, 1) or not out.exists():
        raise RuntimeError(f"bench direct failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["loadavg_before"] = load
    result["loadavg_after"] = _loadavg()
    # CPU seconds of each process over the whole bench command (connect to history)
    result["process_cpu_s"] = {k: round((procstat.cpu_seconds(pid) or 0.0) - cpu0[k], 2)
                               for k, pid in pids.items()}
    result["command"] = " ".join(cmd[1:])
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def line(delay: float, mode: str, r: dict[str, Any]) -> str:
    lat, ack, lag = r["latency_ms"], r["ack_latency_ms"], r.get("replication_lag") or {}
    v = r["verdict"]
    return (f"rtt={2 * delay:g}ms {mode:5} rate={r['offered_rate']:g} "
            f"send->receipt p50={lat['p50_ms']} p99={lat['p99_ms']} "
            f"ack p50={ack['p50_ms']} p99={ack['p99_ms']} "
            f"lag max={lag.get('max')} p99={lag.get('p99')} "
            f"{'CLEAN' if r['clean'] else 'NOT CLEAN'} lost={v.get('lost', 0)} "
            f"dup={v.get('duplicated', 0)} reorder={v.get('reordered', 0)} "
            f"acked={r['acked']} kept_up={r['kept_up']} load={r['loadavg_before']} "
            f"cpu_s={r['process_cpu_s']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays", default="25,0", help="ms each way, comma-separated")
    parser.add_argument("--modes", default="sync,async", help="region durability modes")
    parser.add_argument("--rates", default="200,1000", help="offered msgs/s, comma-separated")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--out", default="", help="directory for each run's JSON")
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="give up (and stop everything) after this long")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("regionbench: --max-seconds reached"))
    signal.alarm(int(args.max_seconds))
    out = Path(args.out or tempfile.mkdtemp(prefix="regionbench-"))
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for delay in (float(d) for d in args.delays.split(",")):
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory(prefix="regionbench-") as tmp, \
                    regions(Path(tmp), delay, mode) as urls:
                for rate in (float(r) for r in args.rates.split(",")):
                    result = bench(urls["eu"], urls["us"], rate, args,
                                   out / f"rtt{2 * delay:g}-{mode}-{rate:g}.json")
                    lines.append(line(delay, mode, result))
                    print(lines[-1], flush=True)
    print("\n".join(["summary:", *lines]))
    print(f"JSON per run in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
