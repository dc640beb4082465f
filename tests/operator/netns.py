"""A network namespace joined to the host by a veth pair, and real gateways inside it.

The operator reaches gateway pods at their pod IP, never at loopback; a test that runs the
gateways on 127.0.0.1 cannot tell whether a call was allowed because it carried the admin
secret or because it came from loopback. `veth_namespace()` makes a namespace `cpop<hex>`
whose end of a veth pair has `10.234.<k>.2/30` (the host's end `.1`), so a gateway listening
there is reached from the host over a non-loopback address. `NamespaceNode` is one real
`chatplane up` process started inside it with `ip netns exec`. Needs root (CAP_NET_ADMIN)
and iproute2; the tests skip without them. Everything is removed at the end (deleting the
namespace deletes the veth pair).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

RUN_CLI = "import sys; from chatplane.cli import main; sys.exit(main())"


@dataclasses.dataclass(frozen=True)
class VethNamespace:
    name: str
    host_ip: str  # the host's end of the veth pair
    ip: str  # the namespace's end: where its servers listen


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def can_make_namespaces() -> str:
    """'' when this process can create network namespaces; otherwise why not."""
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    return ""


def _free_subnet() -> int:
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                          check=True).stdout
    for _ in range(100):
        k = random.randrange(1, 255)
        if f"10.234.{k}." not in used:
            return k
    raise RuntimeError("no free 10.234.<k>.0/30 subnet")


@contextlib.contextmanager
def veth_namespace() -> Iterator[VethNamespace]:
    tag = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"cpop{tag}", f"cpoh{tag}", f"cpon{tag}"
    k = _free_subnet()
    ns = VethNamespace(name, f"10.234.{k}.1", f"10.234.{k}.2")
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{ns.ip}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield ns
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)
        _ip("netns", "del", name)


@dataclasses.dataclass
class NamespaceNode:
    """`chatplane up` inside `ns`, listening on the namespace's address."""

    name: str
    ns: VethNamespace
    workdir: Path
    http_port: int
    tcp_port: int
    admin_port: int  # == http_port while the data plane serves /admin/drain there
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"http://{self.ns.ip}:{self.admin_port}"

    @property
    def tcp(self) -> str:
        return f"{self.ns.ip}:{self.tcp_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        data = self.workdir / self.name
        data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        if self.admin_port != self.http_port:
            env["CHATPLANE_ADMIN_PORT"] = str(self.admin_port)
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, sys.executable, "-c", RUN_CLI, "up",
             "--host", self.ns.ip, "--port", str(self.http_port),
             "--tcp-port", str(self.tcp_port), "--data-dir", str(data)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.ns.ip}:{self.http_port}/readyz"
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited: {self.log()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout_s}s: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def log(self) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
