"""Two local regions for the region benches: `chatplane up` as eu and as us on
loopback, each its own data dir, ports and SQLite store, one token key, peered
with each other; optionally a delay proxy (`delayproxy.py`) on each direction of
their cross-region link, and a failover witness (`chatplane witness`).

`bench regions` (unless pointed at running regions) and `bench failover` start
them. Every process is started under the supervision watchdog (`watched`), so a
bench killed with -9 leaves none behind. `kill(name)` is kill -9 of a region,
`start(name)` brings it back on its store, `close()` stops everything.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatplane.ports import free_port, free_port_pair
from chatplane.supervision import watched

KEY = "a-token-key-the-bench-regions-share"  # CHATPLANE_TOKEN_SECRET of both regions
NAMES = ("eu", "us")
# the probe settings a deployment runs with (a test may shorten them in the environment)
DEPLOYED_PROBES = {"CHATPLANE_PEER_PROBE_S": "2", "CHATPLANE_PEER_TIMEOUT_S": "1"}
START_TIMEOUT_S = 60.0


class StartFailed(RuntimeError):
    """A process did not get ready (its last output lines are in the message)."""


class Child:
    """A process whose output is kept (the last lines) and read by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.grants: list[str] = []  # a witness's "granted ... the takeover" lines
        self.ready = threading.Event()
        self.proc = subprocess.Popen(watched(args), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "granted" in line:
                self.grants.append(line.rstrip())
            if "ready" in line:
                self.ready.set()

    def wait_ready(self, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self.lines)[-20:])
                raise StartFailed(f"{what} did not get ready:\n{tail}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class LocalRegion:
    name: str
    data_dir: Path
    http_port: int = field(default_factory=free_port_pair)  # admin: + 1
    tcp_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    link_port: int = 0  # what the peer dials: a delay proxy in front of grpc_port, or it
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port + 1}"

    @property
    def pid(self) -> int:
        return self.child.proc.pid if self.child is not None else 0

    def get(self, path: str) -> tuple[int, str]:
        """GET on the admin port (`/v1/peers`, `/metrics`); (0, error) when it cannot."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def peers_report(self) -> dict[str, Any]:
        status, text = self.get("/v1/peers")
        return json.loads(text) if status == 200 else {}

    def sees(self, peer: str) -> bool:
        return any(p.get("name") == peer and p.get("ok")
                   for p in self.peers_report().get("peers", []))

    def holds_lease(self) -> bool:
        witness = self.peers_report().get("failover", {}).get("witness")
        return bool(witness and witness.get("held"))


class LocalRegions:
    """eu and us (and their proxies and witness), started by `start_all()`."""

    def __init__(self, base: Path, *, durability: str = "sync", rtt_ms: float = 0.0,
                 witness: bool = False, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.durability = durability
        self.rtt_ms = rtt_ms
        self.regions = {n: LocalRegion(n, base / n) for n in NAMES}
        self.proxies: list[Child] = []
        self.witness: Child | None = None
        self.witness_port = free_port() if witness else 0
        self.extra_env = env or {}
        for region in self.regions.values():
            region.link_port = free_port() if rtt_ms > 0 else region.grpc_port

    def __getitem__(self, name: str) -> LocalRegion:
        return self.regions[name]

    def other(self, name: str) -> LocalRegion:
        return next(r for n, r in self.regions.items() if n != name)

    def _env(self, region: LocalRegion) -> dict[str, str]:
        other = self.other(region.name)
        peers = [{"name": other.name, "endpoint": f"127.0.0.1:{other.link_port}",
                  # the peer's public gateway: dispatch's fallback when this region is lost
                  "ws": f"ws://127.0.0.1:{other.http_port}/ws"}]
        env = {**DEPLOYED_PROBES, **os.environ,
               "CHATPLANE_TOKEN_SECRET": KEY, "CHATPLANE_REGION_DURABILITY": self.durability,
               "CHATPLANE_REGION": region.name, "CHATPLANE_GRPC_PORT": str(region.grpc_port),
               "CHATPLANE_ADMIN_PORT": str(region.http_port + 1),
               "CHATPLANE_PEERS": json.dumps(peers), **self.extra_env}
        if self.witness_port:
            env["CHATPLANE_FAILOVER_WITNESS"] = f"127.0.0.1:{self.witness_port}"
        return env

    def start_all(self) -> None:
        """The witness, the proxies, both regions; returns once each sees the other
        (and, with a witness, holds its lease). Stops what it started if one fails."""
        try:
            if self.witness_port:
                self.witness = Child([sys.executable, "-m", "chatplane.cli", "--log-level",
                                      "INFO", "witness", "--grpc-port", str(self.witness_port),
                                      "--data-dir", str(self.base / "witness")], dict(os.environ))
                self.witness.wait_ready("chatplane witness")
            if self.rtt_ms > 0:
                for region in self.regions.values():  # the proxy its peer dials to reach it
                    proxy = Child([sys.executable, "-m", "chatplane.bench.delayproxy",
                                   "--listen", f"127.0.0.1:{region.link_port}",
                                   "--target", f"127.0.0.1:{region.grpc_port}",
                                   "--delay-ms", str(self.rtt_ms / 2), "--max-seconds", "7200"],
                                  dict(os.environ))
                    self.proxies.append(proxy)
                for proxy in self.proxies:  # it prints "delayproxy ..." once listening
                    _wait_line(proxy, "delayproxy")
            for name in NAMES:
                self.start(name)
            self.wait_linked()
        except BaseException:
            self.close()
            raise

    def start(self, name: str) -> None:
        """Start (or start again, on its store) region `name`; returns once ready."""
        region = self.regions[name]
        region.child = Child([sys.executable, "-m", "chatplane.cli", "up",
                              "--data-dir", str(region.data_dir), "--host", "127.0.0.1",
                              "--port", str(region.http_port),
                              "--tcp-port", str(region.tcp_port)], self._env(region))
        region.child.wait_ready(f"chatplane up ({name})")

    def wait_linked(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for region in self.regions.values():
            peer = self.other(region.name).name
            while not region.sees(peer) or (self.witness_port and not region.holds_lease()):
                if time.monotonic() > deadline:
                    raise StartFailed(f"{region.name} never saw {peer}"
                                      + (" or held its witness lease" if self.witness_port
                                         else ""))
                time.sleep(0.2)

    def kill(self, name: str) -> None:
        """kill -9 of region `name` (its only process: `chatplane up` runs every tier)."""
        child = self.regions[name].child
        if child is not None:
            child.kill()

    def grants(self) -> list[str]:
        return list(self.witness.grants) if self.witness is not None else []

    def close(self) -> None:
        for region in self.regions.values():
            if region.child is not None:
                region.child.stop()
        for child in [*self.proxies, *([self.witness] if self.witness else [])]:
            child.stop()

    def __enter__(self) -> LocalRegions:
        self.start_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_line(child: Child, word: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not any(word in line for line in list(child.lines)):
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.stop()
            raise StartFailed(f"no {word!r} line:\n" + "\n".join(list(child.lines)[-20:]))
        time.sleep(0.05)
