"""`chatplane bench direct`: one W1 run, or a ladder of rates, with plots.

This module turns the parsed command line into runs: it picks the clients
(`lean`, the raw TCP generator of `leanclient.py`, by default; `sdk` for
WebSocket and for chaos runs, whose reconnects are what they test), finds the
server's PID for the /proc CPU figure, runs one rate or each rung of
`--ladder` (fresh users per rung), or, with `--cluster DIR` (a `cluster up`
deployment), reads every process's CPU and reports it per tier
(`tiercpu.py`); prints the table per run and a ladder
summary, names the highest clean rate (clean verdict, kept up, p99 under
`--p99-limit-ms`), and writes the plots with `--plots DIR` (`plots.py`).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import urllib.parse
from typing import Any

from chatplane.bench import procstat, report, scrape, tiercpu
from chatplane.bench.direct import DirectConfig, SetupError


class UsageError(ValueError):
    """A combination of options that cannot work (exit code 2)."""


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError as exc:
        raise UsageError(f"--ladder wants comma-separated rates, got {text!r}") from exc
    if not rates or min(rates) <= 0:
        raise UsageError("--ladder wants positive rates")
    return rates


def _server_pid(args: argparse.Namespace) -> int:
    """The server's PID: given, or the local process listening on --url's port."""
    if args.server_pid:
        return int(args.server_pid)
    parsed = urllib.parse.urlsplit(args.url)
    if parsed.hostname in ("127.0.0.1", "localhost", "::1") and parsed.port:
        return procstat.listener_pid(parsed.port) or 0
    return 0


def _cluster(args: argparse.Namespace) -> tiercpu.Deployment | None:
    """With --cluster: its processes, and --url / --data-dir from it unless given."""
    if not args.cluster:
        if not args.url or not args.data_dir:
            raise UsageError("--url and --data-dir are required (or --cluster DIR)")
        return None
    if args.server_pid:
        raise UsageError("--server-pid and --cluster both name the server's processes")
    try:
        found = tiercpu.load(args.cluster)
    except tiercpu.NoCluster as exc:
        raise UsageError(str(exc)) from exc
    args.url = args.url or found.dispatch
    args.data_dir = args.data_dir or found.data_dir
    return found


def _check(args: argparse.Namespace) -> str:
    """The transport the clients use, or UsageError for a combination that cannot work."""
    if args.pairs < 1 or args.rate <= 0 or args.duration <= 0 or args.procs < 1:
        raise UsageError("--pairs, --rate, --duration and --procs must be positive")
    if args.client == "lean":
        if args.transport not in (None, "tcp"):
            raise UsageError("the lean client speaks raw TCP only: use --client sdk for WebSocket")
        if args.cut_every > 0:
            raise UsageError("the lean client does not reconnect: use --client sdk with --cut-every")
        if args.url.startswith("https://"):
            raise UsageError("the lean client speaks plain TCP only: use --client sdk with TLS")
        return "tcp"
    return args.transport or "ws"


async def _base_spec(args: argparse.Namespace, transport: str) -> dict[str, Any]:
    from chatplane.bench.spread import token_signer

    token_signer(args.data_dir)  # a wrong --data-dir fails first, with its own message
    spec: dict[str, Any] = {
        "url": args.url,
        "data_dir": args.data_dir,
        "transport": transport,
        "client": args.client,
        "uvloop": not args.no_uvloop,
        "ca": args.ca,
        "receiver_url": args.receiver_url,
    }
    if args.client == "lean":
        from chatplane.bench.leanclient import tcp_endpoint

        spec["tcp"] = list(await tcp_endpoint(args.url))
        if args.receiver_url:
            spec["receiver_tcp"] = list(await tcp_endpoint(args.receiver_url))
    return spec


def _one_run(
    cfg: DirectConfig, spec: dict[str, Any], procs: int, quiet: bool
) -> dict[str, Any]:
    from chatplane.bench import spread

    def on_progress(snap: dict[str, Any]) -> None:
        if not quiet:
            report.print_progress(snap)

    use_uvloop = bool(spec["uvloop"])
    if procs == 1:
        connector = spread.connector_for(spec)
        receive = spread.connector_for(spec, receiving=True)
        return spread.run_loop(
            spread.run_local(cfg, connector, on_progress, receive_connector=receive), use_uvloop
        )
    return spread.run_loop(spread.run_spread(cfg, spec, procs, on_progress), use_uvloop)


def highest_clean(rungs: list[dict[str, Any]], p99_limit_ms: float) -> float | None:
    """The highest offered rate whose run was clean, kept up and had p99 under the limit."""
    good = [
        r["offered_rate"]
        for r in rungs
        if r.get("clean") and r.get("kept_up") and r["latency_ms"]["p99_ms"] < p99_limit_ms
    ]
    return max(good) if good else None


def ladder_table(rungs: list[dict[str, Any]], p99_limit_ms: float) -> str:
    lines = [
        "rung  offered/s  sent/s  clean  kept_up  p50_ms  p99_ms  max_ms  server_us/msg  bench_us/msg"
    ]
    for r in rungs:
        lat = r["latency_ms"]
        lines.append(
            f"{r['offered_rate']:>14.0f} {r.get('send_rate', 0):>7.0f}  "
            f"{'yes' if r.get('clean') else 'NO':>5}  {'yes' if r.get('kept_up') else 'NO':>7}  "
            f"{lat['p50_ms']:>6}  {lat['p99_ms']:>6}  {lat['max_ms']:>6}  "
            f"{r.get('server_cpu_us_per_msg')!s:>13}  {r.get('bench_cpu_us_per_msg')!s:>12}"
        )
    best = highest_clean(rungs, p99_limit_ms)
    lines.append(
        f"highest clean rate (p99 < {p99_limit_ms:g} ms): "
        + (f"{best:.0f} msgs/s" if best is not None else "none")
    )
    return "\n".join(lines)


def run_direct_command(args: argparse.Namespace) -> int:
    import asyncio

    try:
        deployment = _cluster(args)
        transport = _check(args)
        rates = _rates(args.ladder) if args.ladder else [args.rate]
    except UsageError as exc:
        print(f"bench direct: {exc}", file=sys.stderr)
        return 2
    try:
        spec = asyncio.run(_base_spec(args, transport))
    except SetupError as exc:
        print(f"bench direct: {exc}", file=sys.stderr)
        return 1
    pid = 0 if deployment is not None else _server_pid(args)
    procs = min(args.procs, args.pairs)
    settings = {
        "transport": transport,
        "client": args.client,
        "procs": procs,
        "window": max(1, args.window),
        "size": args.size,
        "requested_duration_s": args.duration,
        "uvloop": not args.no_uvloop,
        "cut_every_s": max(0.0, args.cut_every),
        "tls": args.url.startswith("https://"),
        "server_cpu_source": (
            f"/proc/PID/stat of the {len(deployment.pids)} processes in {args.cluster}"
            if deployment is not None else f"/proc/{pid}/stat" if pid else "/metrics"),
        "receiver_url": args.receiver_url or args.url,
    }
    if deployment is not None:
        settings["cpu_tiers"] = deployment.tiers
        settings["cpu_pids"] = deployment.pids
    rungs: list[dict[str, Any]] = []
    for rate in rates:
        cfg = DirectConfig(
            pairs=args.pairs,
            rate=rate,
            duration=args.duration,
            size=args.size,
            window=max(1, args.window),
            drain_timeout=args.drain_timeout,
            devices=max(1, args.devices),
            cut_every=max(0.0, args.cut_every),
            cut_fraction=min(1.0, max(0.0, args.cut_fraction)),
            metrics_url="" if deployment is not None else scrape.admin_url(args.url, args.admin_url),
            ca=args.ca,
            server_pid=pid,
            cpu_pids=deployment.pids if deployment is not None else {},
            lag_metrics_url=(
                scrape.admin_url(args.receiver_url, args.receiver_admin_url)
                if args.receiver_url else ""
            ),
            user_prefix=f"w1{secrets.token_hex(3)}",  # fresh users: no history from earlier runs
        )
        try:
            result = _one_run(cfg, spec, procs, args.quiet)
        except SetupError as exc:
            print(f"bench direct: {exc}", file=sys.stderr)
            return 1
        except (OSError, RuntimeError, TimeoutError) as exc:
            print(f"bench direct: {exc!r}", file=sys.stderr)
            return 1
        pub = report.finish(result, settings)
        pub["latency_buckets"] = result.get("latency", {})
        print(report.table({k: v for k, v in pub.items() if k != "latency_buckets"}))
        rungs.append(pub)
    out: dict[str, Any] = dict(rungs[0]) if len(rungs) == 1 else {
        "workload": "W1 direct ladder",
        "settings": {**settings, "pairs": args.pairs, "rates": rates},
        "rungs": rungs,
        "highest_clean_rate": highest_clean(rungs, args.p99_limit_ms),
        "clean": all(r["clean"] for r in rungs),
    }
    if len(rungs) > 1:
        print(ladder_table(rungs, args.p99_limit_ms))
    if args.plots:
        from chatplane.bench import plots

        try:
            written = plots.write_all(rungs, args.plots, args.p99_limit_ms)
        except plots.PlotsUnavailable as exc:
            print(f"bench direct: {exc}", file=sys.stderr)
            return 1
        print("plots        " + " ".join(written))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
    # a ladder climbs past the clean rate on purpose: it fails only if no rung was clean
    if len(rungs) > 1:
        return 0 if any(r["clean"] for r in rungs) else 1
    return 0 if rungs[0]["clean"] else 1


def add_arguments(direct: argparse.ArgumentParser) -> None:
    """The options of this module (the others are in `bench/__init__.py`)."""
    direct.add_argument(
        "--client", choices=("lean", "sdk"), default="lean",
        help="lean: raw TCP frames, little client CPU (default); sdk: the Python SDK "
        "(WebSocket, TLS, chaos with --cut-every)",
    )
    direct.add_argument("--server-pid", type=int, default=0,
                        help="read the server's CPU from /proc/PID (default: the local "
                        "process listening on --url's port, else its /metrics)")
    direct.add_argument("--cluster", default="", metavar="DIR",
                        help="a `chatplane cluster up --data-dir DIR` deployment: read the CPU "
                        "of each of its processes (from DIR/cluster.json) and report it per "
                        "tier; --url and --data-dir default to its dispatch and data dir")
    direct.add_argument("--ladder", default="", metavar="R1,R2,...",
                        help="run each rate in turn (fresh users each) and name the highest "
                        "clean one")
    direct.add_argument("--p99-limit-ms", type=float, default=50.0,
                        help="a ladder rung counts as clean only with p99 under this (default 50)")
    direct.add_argument("--plots", default="", metavar="DIR",
                        help="write PNG plots here (latency, the ladder, CPU per message; "
                        "needs matplotlib: pip install 'chatplane[bench]')")

