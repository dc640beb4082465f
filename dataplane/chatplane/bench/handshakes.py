"""`chatplane bench handshakes`: full TLS handshakes per second one gateway completes.

C concurrent loops each open a TCP connection to the gateway's TLS port (the raw
TCP+TLS port by default, or the HTTPS port with `--port-of http`), complete the
handshake (verifying the certificate, no session resumption), and close; for
`--duration` seconds. Reports handshakes per second, the handshake latency
percentiles, and the server's CPU per handshake from its /metrics (the gateway's
other work included, so run it against an otherwise idle server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.parse
from typing import Any

from chatplane.bench import scrape
from chatplane.bench.direct import CPU_METRIC
from chatplane.client.links import TLS_TCP, dispatch, tls_context


async def _target(url: str, ca: str, port_of: str) -> tuple[str, int]:
    if port_of == "http":
        parsed = urllib.parse.urlsplit(url)
        return parsed.hostname or "127.0.0.1", parsed.port or 443
    import aiohttp

    async with aiohttp.ClientSession() as http:
        endpoints = await dispatch(http, url, "bench-handshakes", tls_context(ca or None))
    tcp = next((e["tcp"] for e in endpoints if e.get("tcp", "").startswith(TLS_TCP)), "")
    if not tcp:
        raise RuntimeError("dispatch offers no tcps:// endpoint: is the TCP port on TLS?")
    host, _, port = tcp.removeprefix(TLS_TCP).rpartition(":")
    return host, int(port)


async def run(url: str, ca: str, duration_s: float, concurrency: int,
              port_of: str, admin_url: str = "") -> dict[str, Any]:
    host, port = await _target(url, ca, port_of)
    metrics_url = scrape.admin_url(url, admin_url)
    context = tls_context(ca or None)
    latencies: list[float] = []
    failures = 0
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration_s

    async def one_loop() -> None:
        nonlocal failures
        while loop.time() < stop_at:
            started = time.perf_counter()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host), 10)
            except (OSError, TimeoutError):
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)
            writer.transport.abort()  # no close_notify wait: the handshake is what is measured

    before = await scrape.read(metrics_url, ca)
    began = loop.time()
    await asyncio.gather(*(one_loop() for _ in range(concurrency)))
    elapsed = loop.time() - began
    after = await scrape.read(metrics_url, ca)
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) \
            if latencies else None

    cpu = scrape.delta(before, after, CPU_METRIC) if CPU_METRIC in after else None
    return {
        "target": f"{host}:{port}", "port_of": port_of, "concurrency": concurrency,
        "duration_s": round(elapsed, 2), "handshakes": len(latencies), "failures": failures,
        "handshakes_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "server_cpu_s": None if cpu is None else round(cpu, 3),
        "server_cpu_us_per_handshake": (round(cpu * 1e6 / len(latencies))
                                        if cpu is not None and latencies else None),
    }


def run_command(args: argparse.Namespace) -> int:
    if args.duration <= 0 or args.concurrency < 1:
        print("bench handshakes: --duration and --concurrency must be positive", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(run(args.url, args.ca, args.duration, args.concurrency,
                                 args.port_of, args.admin_url))
    except (OSError, RuntimeError) as exc:
        print(f"bench handshakes: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0 if result["handshakes"] and not result["failures"] else 1


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser("handshakes", help="TLS handshakes per second on one gateway")
    p.add_argument("--url", required=True, help="the gateway's base URL (https://H:P)")
    p.add_argument("--ca", default="", help="PEM CA its certificate chains to")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--port-of", choices=("tcp", "http"), default="tcp",
                   help="handshake on the TCP+TLS port (default) or the HTTPS port")
    p.add_argument("--admin-url", default="",
                   help="its admin port, for /metrics (default: --url's port + 1)")
    p.set_defaults(func=run_command)
