"""Regions for tests: real `chatplane up` processes configured as peers of each other
(`CHATPLANE_REGION`, `CHATPLANE_PEERS`, a shared or a different token key), and reading
what each reports on `GET /v1/peers`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.server import ServerProcess, free_port
from tests.support.traffic import Device

SHARED_KEY = "a-token-key-every-region-shares"
FAST_PROBES = {"CHATPLANE_PEER_PROBE_S": "0.2", "CHATPLANE_PEER_TIMEOUT_S": "0.5"}


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
    eu.start()
    us.start()
    try:
        yield eu, us
    finally:
        for region in (eu, us):
            if region.proc is not None and region.proc.poll() is None:
                os.kill(region.proc.pid, signal.SIGCONT)
            region.stop()


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
