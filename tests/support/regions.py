"""Regions for tests: real `chatplane up` processes configured as peers of each other
(`CHATPLANE_REGION`, `CHATPLANE_PEERS`, a shared or a different token key), and reading
what each reports on `GET /v1/peers`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.proxy import ChaosProxy
from tests.support.server import ServerProcess, free_port, start_until_ready, stop_process
from tests.support.traffic import Device

SHARED_KEY = "a-token-key-every-region-shares"
FAST_PROBES = {"CHATPLANE_PEER_PROBE_S": "0.2", "CHATPLANE_PEER_TIMEOUT_S": "0.5"}
# for a region (or witness) to get ready: one `chatplane up` alone took 15-20 s at load
# 21 on the 2-core machine, so the usual 20 s failed region tests before they began
START_S = 60.0


class RegionProcess(ServerProcess):
    """`chatplane up` as region `name`, listening on `host` (any 127.x address), its
    cross-region gRPC endpoint on `grpc_port`."""

    def __init__(self, data_dir: Path, name: str, *, host: str = "127.0.0.1",
                 http_port: int = 0, grpc_port: int = 0, key: str = SHARED_KEY,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.host = name, host
        self.grpc_port = grpc_port or free_port()
        super().__init__(data_dir, tcp=False, extra_args=["--host", host], env={
            "CHATPLANE_REGION": name, "CHATPLANE_GRPC_PORT": str(self.grpc_port),
            "CHATPLANE_TOKEN_SECRET": key, **FAST_PROBES, **(env or {})})
        if http_port:
            self.port = http_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, timeout_s: float = START_S) -> None:
        super().start(timeout_s)

    def set_peers(self, peers: list[dict[str, str]]) -> None:
        self.env["CHATPLANE_PEERS"] = json.dumps(peers)

    def set_key(self, key: str) -> None:
        self.env["CHATPLANE_TOKEN_SECRET"] = key

    def get(self, path: str) -> tuple[int, str]:
        """GET on the admin port (`/v1/peers`, `/metrics`)."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def peers(self) -> dict[str, dict[str, Any]]:
        """The peers this region reports, by name."""
        status, text = self.get("/v1/peers")
        assert status == 200, text
        return {p["name"]: p for p in json.loads(text)["peers"]}


class WitnessProcess:
    """`chatplane witness` on loopback, its state in `data_dir` (kept across restarts)."""

    def __init__(self, data_dir: Path, port: int = 0, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = START_S) -> None:
        self.proc = start_until_ready(
            [sys.executable, "-m", "chatplane.cli", "--log-level", "INFO", "witness",
             "--grpc-port", str(self.port), "--data-dir", str(self.data_dir)],
            self.env, self.output, timeout_s, "chatplane witness")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)

    def granted(self) -> list[str]:
        """The grants it logged ("granted us the takeover of eu (grant 1)")."""
        return [line for line in self.output if "granted" in line]


class Cuts:
    """Proxies on every link of two regions and their witness, each blockable: eu's
    and us's calls to each other (`eu_us`: eu dials us through it), and each one's
    calls to the witness."""

    def __init__(self, eu: RegionProcess, us: RegionProcess, witness: WitnessProcess) -> None:
        self.eu_us = ChaosProxy("127.0.0.1", us.grpc_port)
        self.us_eu = ChaosProxy("127.0.0.1", eu.grpc_port)
        self.eu_witness = ChaosProxy("127.0.0.1", witness.port)
        self.us_witness = ChaosProxy("127.0.0.1", witness.port)

    def all(self) -> list[ChaosProxy]:
        return [self.eu_us, self.us_eu, self.eu_witness, self.us_witness]

    def partition(self) -> None:
        """Cut the region link both ways (both still reach the witness)."""
        self.eu_us.block()
        self.us_eu.block()

    def heal(self) -> None:
        for proxy in self.all():
            proxy.unblock()


@contextlib.asynccontextmanager
async def witnessed_regions(base: Path, env: dict[str, str] | None = None,
                            ) -> AsyncIterator[tuple[RegionProcess, RegionProcess,
                                                     WitnessProcess, Cuts]]:
    """eu and us peered through proxies, each reaching a witness through its own proxy
    (`CHATPLANE_FAILOVER_WITNESS`), started; all stopped at the end."""
    witness = WitnessProcess(base / "witness")
    eu = RegionProcess(base / "eu", "eu", env=env)
    us = RegionProcess(base / "us", "us", env=env)
    cuts = Cuts(eu, us, witness)
    for proxy in cuts.all():
        await proxy.start()
    for me, link, to_witness, other in ((eu, cuts.eu_us, cuts.eu_witness, us),
                                        (us, cuts.us_eu, cuts.us_witness, eu)):
        me.set_peers([{"name": other.name, "endpoint": f"127.0.0.1:{link.port}"}])
        me.env["CHATPLANE_FAILOVER_WITNESS"] = f"127.0.0.1:{to_witness.port}"
    try:
        await asyncio.to_thread(witness.start)
        await asyncio.gather(asyncio.to_thread(eu.start), asyncio.to_thread(us.start))
        yield eu, us, witness, cuts
    finally:
        for region in (eu, us):
            if region.proc is not None and region.proc.poll() is None:
                os.kill(region.proc.pid, signal.SIGCONT)
            await asyncio.to_thread(region.stop)
        await asyncio.to_thread(witness.stop)
        for proxy in cuts.all():
            await proxy.stop()


def peer_each_other(*regions: RegionProcess) -> None:
    for region in regions:
        region.set_peers([{"name": other.name, "endpoint": other.endpoint,
                           "datacenter": f"dc-{other.name}"}
                          for other in regions if other is not region])


@contextlib.contextmanager
def two_regions(base: Path, env: dict[str, str] | None = None,
                ) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    """eu and us, each a `chatplane up` peered with the other (with `env` added to
    both), started; stopped at the end (continued first, if a test left one stopped
    with SIGSTOP)."""
    eu = RegionProcess(base / "eu", "eu", env=env)
    us = RegionProcess(base / "us", "us", env=env)
    peer_each_other(eu, us)
    try:  # a start that fails stops the region already started too
        eu.start()
        us.start()
        yield eu, us
    finally:
        for region in (eu, us):
            if region.proc is not None and region.proc.poll() is None:
                os.kill(region.proc.pid, signal.SIGCONT)
            region.stop()


def metric(region: RegionProcess, name: str, peer: str = "") -> float:
    """A metric's value on `region`'s /metrics (of `peer`'s series when given)."""
    status, text = region.get("/metrics")
    assert status == 200
    label = f'{{peer="{peer}"}}' if peer else ""
    line = next(x for x in text.splitlines() if x.startswith(f"{name}{label} "))
    return float(line.rsplit(" ", 1)[1])


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll until `check` returns something truthy (no timing is asserted)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def region_device(where: RegionProcess | Sequence[str], user: str, device: str,
                        checker: DeliveryChecker, *, timeout_s: float = 20.0,
                        defer: bool = False) -> Device:
    """An SDK device of `user` logged in at a region (or given entry URLs, tried in
    order: failover) with a token of the shared key, started (its receipts go to
    `checker`; `defer`: judged at the end)."""
    urls = [where.url] if isinstance(where, RegionProcess) else list(where)
    client = Client(urls, TokenSigner(SHARED_KEY).mint(user, device),
                    request_timeout_s=timeout_s)
    await client.connect()
    dev = Device(client, user, device, checker, defer=defer)
    dev.start()
    return dev


def sees(region: RegionProcess, peer: str) -> bool:
    """`region`'s probes find `peer` answering (/v1/peers)."""
    return bool(region.peers()[peer]["ok"])


def move_home(region: RegionProcess, conversation: str, to: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/admin/conversations/{id}/home on `region`'s admin port."""
    return _post_home(region, f"conversations/{conversation}", to)


def move_user_home(region: RegionProcess, user: str, to: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/admin/users/{id}/home on `region`'s admin port."""
    return _post_home(region, f"users/{user}", to)


def _post_home(region: RegionProcess, what: str, to: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{region.admin_url}/v1/admin/{what}/home",
        data=json.dumps({"region": to}).encode(), method="POST",
        headers={"Authorization": f"Bearer {region.admin_secret}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def judged_history(device: Device, conversation: str) -> list[tuple[int, str]]:
    """The conversation's last 200 messages as (seq, message id), judged by the
    device's checker as a history page."""
    page = await device.client.history(conversation, limit=200)
    device.checker.check_history(device.user, device.device, conversation,
                                 [(m.seq, m.message_id) for m in page])
    return [(m.seq, m.message_id) for m in page]


def caught_up(*regions: RegionProcess) -> bool:
    """Each of the regions applied every other one's log to its head, connected."""
    for region in regions:
        peers = region.peers()
        if not all(peers[other.name]["replication"]["lag"] == 0
                   and peers[other.name]["replication"]["connected"]
                   for other in regions if other is not region):
            return False
    return True
