"""`chatplane bench idle` (W3): C idle authenticated connections.

Connects C lean clients (`rawclient.RawClient`, raw TCP, or with
`--transport ws` `rawclient.WsRawClient`, WebSocket; each its own user)
through dispatch at a set pace, holds them with heartbeats, and reports the
time to connect (per connection: dispatch + TCP + login, p50/p99/max, and
for all) and the gateways' resident memory per connection: the growth of
`chatplane_process_rss_bytes` on every gateway dispatch lists, divided by
the connections they gained. Runs against `chatplane up --tcp-port` or
`chatplane cluster up`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl as ssl_
import sys
import time
import urllib.request
from typing import Any

from chatplane.auth import TokenSigner
from chatplane.bench.rawclient import Dispatcher, RawClient, WsRawClient
from chatplane.bench.report import emit
from chatplane.bench.scrape import admin_url, parse
from chatplane.bench.spread import run_loop


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape(url: str) -> dict[str, float]:
    """/metrics of the gateway at public base URL `url` (its admin port: port + 1)."""
    with urllib.request.urlopen(admin_url(url) + "/metrics", timeout=5) as response:
        return parse(response.read().decode())


async def gateway_urls(dispatch_url: str) -> dict[str, str]:
    """gateway id -> its HTTP base URL, for every gateway dispatch lists."""
    dispatcher = Dispatcher(dispatch_url)
    try:
        urls: dict[str, str] = {}
        for i in range(8):  # different uids see the gateways in different orders
            for e in await dispatcher.endpoints(f"probe{i}"):
                urls[e["gateway_id"]] = e["ws"].replace("ws://", "http://").rsplit("/ws", 1)[0]
        return urls
    finally:
        await dispatcher.close()


async def connect_all(
    dispatch_url: str, signer: TokenSigner, count: int, rate: float, prefix: str, timeout_s: float,
    ssl: ssl_.SSLContext | None = None, transport: str = "tcp",
) -> tuple[list[RawClient], Dispatcher, float]:
    dispatcher = Dispatcher(dispatch_url, ssl)
    kind = WsRawClient if transport == "ws" else RawClient
    clients = [
        kind(dispatcher, f"{prefix}{i}", signer.mint(f"{prefix}{i}", "idle")) for i in range(count)
    ]
    began = time.monotonic()
    try:
        for i, client in enumerate(clients):
            client.start()
            lag = began + (i + 1) / rate - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)
        try:
            await asyncio.wait_for(asyncio.gather(*(c.resumed.wait() for c in clients)),
                                   timeout_s)
        except TimeoutError:
            behind = sum(1 for c in clients if not c.resumed.is_set())
            raise TimeoutError(f"{behind} of {count} clients not logged in after "
                               f"{timeout_s:.0f}s") from None
    except BaseException:
        await close_all(clients, dispatcher)
        raise
    return clients, dispatcher, time.monotonic() - began


async def close_all(clients: list[RawClient], dispatcher: Dispatcher) -> None:
    """Every client stopped for good (its retry loop too) and the dispatcher closed: a
    client left to the loop's shutdown kept retrying a dead server once, for 100 minutes."""
    await asyncio.gather(*(c.close() for c in clients))
    await dispatcher.close()


async def heartbeats(clients: list[RawClient], every_s: float = 10.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        for c in clients:
            c.heartbeat()


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    signer = TokenSigner.from_data_dir(args.data_dir)
    gateways = await gateway_urls(args.url)
    before = {g: scrape(u) for g, u in gateways.items()}
    clients, dispatcher, took = await connect_all(
        args.url, signer, args.connections, args.rate, f"w3{secrets.token_hex(3)}-", args.timeout,
        transport=args.transport,
    )
    try:
        return await _hold_and_measure(args, clients, gateways, before, took)
    finally:
        await close_all(clients, dispatcher)


async def _hold(clients: list[RawClient], hold_s: float) -> None:
    """Hold the connections `hold_s` seconds; a connection lost meanwhile (a server that
    died or dropped it) ends the run at once: the memory figure would count it."""
    deadline = time.monotonic() + hold_s
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.5))
        lost = sum(1 for c in clients if not c.resumed.is_set())
        if lost:
            raise ConnectionError(f"{lost} of {len(clients)} connections lost during the hold")


async def _hold_and_measure(args: argparse.Namespace, clients: list[RawClient],
                            gateways: dict[str, str], before: dict[str, dict[str, float]],
                            took: float) -> dict[str, Any]:
    beat = asyncio.get_running_loop().create_task(heartbeats(clients))
    try:
        await _hold(clients, args.hold)
    finally:
        beat.cancel()
    after = {g: scrape(u) for g, u in gateways.items()}
    per_gateway = {}
    for g in gateways:
        gained = after[g]["chatplane_connections"] - before[g]["chatplane_connections"]
        grown = after[g]["chatplane_process_rss_bytes"] - before[g]["chatplane_process_rss_bytes"]
        per_gateway[g] = {
            "connections": int(after[g]["chatplane_connections"]),
            "rss_mib": round(after[g]["chatplane_process_rss_bytes"] / 2**20, 1),
            "rss_per_conn_kib": round(grown / gained / 1024, 2) if gained > 0 else None,
        }
    gained_all = sum(after[g]["chatplane_connections"] - before[g]["chatplane_connections"] for g in gateways)
    grown_all = sum(
        after[g]["chatplane_process_rss_bytes"] - before[g]["chatplane_process_rss_bytes"] for g in gateways
    )
    times = [c.connect_ms for c in clients]
    result = {
        "connections": len(clients),
        "transport": args.transport,
        "offered_rate": args.rate,
        "connect_all_s": round(took, 2),
        "connect_ms": {
            "p50": round(percentile(times, 0.5), 1),
            "p99": round(percentile(times, 0.99), 1),
            "max": round(max(times), 1),
        },
        "rss_per_conn_kib": round(grown_all / gained_all / 1024, 2) if gained_all else None,
        "gateways": per_gateway,
    }
    return result


def run_idle_command(args: argparse.Namespace) -> int:
    if args.connections < 1 or args.rate <= 0:
        print("bench idle: --connections and --rate must be positive", file=sys.stderr)
        return 2
    try:
        result = run_loop(run_idle(args))  # uvloop: the crowd costs less
    except (OSError, TimeoutError, KeyError) as exc:
        print(f"bench idle: {exc!r}", file=sys.stderr)
        return 1
    emit(result, args.json)
    return 0


def add_parser(workloads: argparse._SubParsersAction) -> None:
    idle = workloads.add_parser("idle", help="W3: C idle connections: RSS per connection, connect time")
    idle.add_argument("--url", required=True, help="dispatch base URL (http://H:P)")
    idle.add_argument("--data-dir", required=True, help="where the token key is")
    idle.add_argument("--connections", type=int, default=10_000)
    idle.add_argument("--rate", type=float, default=1000.0, help="connects per second")
    idle.add_argument("--transport", choices=("tcp", "ws"), default="tcp",
                      help="raw TCP (default) or WebSocket")
    idle.add_argument("--hold", type=float, default=5.0, help="seconds held before measuring")
    idle.add_argument("--timeout", type=float, default=120.0)
    idle.add_argument("--json", metavar="FILE")
    idle.set_defaults(func=run_idle_command)
