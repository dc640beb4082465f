"""`chatplane bench`: load generators that drive a running server through the SDK.

`register(subparsers)` adds the `bench` command; each workload is a
subcommand whose `func` takes the parsed args and returns an exit code
(0 when the run was clean): `direct` (W1, 1:1 chat between pairs, defined
here and in `direct.py`), `group` (W2), `idle` (W3), `storm` and `handshakes`
(TLS handshakes per second), each of those in its own module with an
`add_parser(workloads)`.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from typing import Any

from chatplane.bench import report, scrape
from chatplane.bench.direct import DirectConfig, SetupError


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="load-test a running server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    workloads = bench.add_subparsers(dest="workload", metavar="WORKLOAD", required=True)
    direct = workloads.add_parser(
        "direct",
        help="W1: sender/receiver pairs of 1:1 chat at an offered rate",
        description="W1: P sender/receiver pairs (one SDK client and one user per side) "
        "offer R msgs/s in total for D seconds to a running server; prints progress, "
        "then latency (send call to receipt) and the delivery checker's verdict.",
    )
    direct.add_argument("--url", required=True, help="the server's base URL (http://H:P)")
    direct.add_argument("--admin-url", default="",
                        help="its admin port, for /metrics (default: --url's port + 1)")
    direct.add_argument(
        "--data-dir", required=True, help="the server's data dir (tokens are minted with its key)"
    )
    direct.add_argument("--pairs", type=int, default=100, help="P (default 100)")
    direct.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="R: offered msgs/s, all pairs together (default 2000)",
    )
    direct.add_argument("--duration", type=float, default=20.0, help="D seconds (default 20)")
    direct.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    direct.add_argument("--ca", default="", help="PEM CA to verify an https:// --url with "
                                                 "(TLS: wss:// or tcps://; default: system CAs)")
    direct.add_argument("--size", type=int, default=32, help="text bytes per message")
    direct.add_argument(
        "--window", type=int, default=32, help="concurrent unacked sends per pair (default 32)"
    )
    direct.add_argument(
        "--procs",
        type=int,
        default=1,
        help="spread the pairs over N processes and merge (default 1)",
    )
    direct.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for acks and deliveries after the run",
    )
    direct.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="D",
        help="devices (clients) per user; all get every message, sends go from the first",
    )
    direct.add_argument(
        "--cut-every",
        type=float,
        default=0.0,
        metavar="S",
        help="chaos: every S seconds abruptly cut the connections of some clients",
    )
    direct.add_argument(
        "--cut-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of all clients cut each time (default 0.1)",
    )
    direct.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    direct.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    direct.add_argument("--quiet", action="store_true", help="no progress lines")
    direct.set_defaults(func=run_direct_command)

    from chatplane.bench import group, handshakes, idle, storm

    handshakes.add_parser(workloads)
    group.add_parser(workloads)
    idle.add_parser(workloads)
    storm.add_parser(workloads)


def run_direct_command(args: argparse.Namespace) -> int:
    from chatplane.bench import spread

    if args.pairs < 1 or args.rate <= 0 or args.duration <= 0 or args.procs < 1:
        print(
            "bench direct: --pairs, --rate, --duration and --procs must be positive",
            file=sys.stderr,
        )
        return 2
    procs = min(args.procs, args.pairs)
    cfg = DirectConfig(
        pairs=args.pairs,
        rate=args.rate,
        duration=args.duration,
        size=args.size,
        window=max(1, args.window),
        drain_timeout=args.drain_timeout,
        devices=max(1, args.devices),
        cut_every=max(0.0, args.cut_every),
        cut_fraction=min(1.0, max(0.0, args.cut_fraction)),
        metrics_url=scrape.admin_url(args.url, args.admin_url),
        ca=args.ca,
        user_prefix=f"w1{secrets.token_hex(3)}",  # fresh users: no history from earlier runs
    )

    def on_progress(snap: dict[str, Any]) -> None:
        if not args.quiet:
            report.print_progress(snap)

    use_uvloop = not args.no_uvloop
    try:
        if procs == 1:
            connector = spread.sdk_connector(args.url, args.data_dir, args.transport, args.ca)
            result = spread.run_loop(spread.run_local(cfg, connector, on_progress), use_uvloop)
        else:
            result = spread.run_loop(
                spread.run_spread(cfg, args.url, args.data_dir, args.transport, procs, use_uvloop),
                use_uvloop,
            )
    except SetupError as exc:
        print(f"bench direct: {exc}", file=sys.stderr)
        return 1
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"bench direct: {exc!r}", file=sys.stderr)
        return 1
    settings = {
        "transport": args.transport,
        "procs": procs,
        "window": cfg.window,
        "size": cfg.size,
        "requested_duration_s": cfg.duration,
        "uvloop": use_uvloop,
        "cut_every_s": cfg.cut_every,
        "tls": args.url.startswith("https://"),
    }
    pub = report.finish(result, settings)
    print(report.table(pub))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(pub, fh, indent=2)
            fh.write("\n")
    return 0 if pub["clean"] else 1
