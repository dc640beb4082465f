"""`chatplane bench`: load generators that drive a running server.

`register(subparsers)` adds the `bench` command; each workload is a
subcommand whose `func` takes the parsed args and returns an exit code
(0 when the run was clean): `direct` (W1, 1:1 chat between pairs: options
here and in `ladder.py`, the run in `direct.py`, the lean client in
`leanclient.py`), `group` (W2), `idle` (W3), `storm`, `rollout` and `apply`
(a deployed ChatCluster, through kubectl: `kube.py`), `handshakes`
(TLS handshakes per second), `web` (the web app in Chromium: first
paint, bundle size, a 10,000-message tab) and the storage tiers' three:
`hotcache` (the hot tier's policy against LRU, simulated), `archive` (the
cold archive on embedded storage or S3) and `invalidation` (a change on one
im instance until every other honours it), and the two of regions: `regions`
(cross-region latency, forwarding, durability modes and replication lag:
`crossregion.py`) and `failover` (kill -9 of a region under traffic:
`failover.py`), both on two regions they start themselves
(`localregions.py`), `regions` on two running ones too; each of those in its
own module with an `add_parser(workloads)`.
"""

from __future__ import annotations

import argparse


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
        description="W1: P sender/receiver pairs (one client and one user per side: lean "
        "raw-TCP clients by default, the SDK with --client sdk) "
        "offer R msgs/s in total for D seconds to a running server; prints progress, "
        "then latency (send call to receipt) and the delivery checker's verdict.",
    )
    direct.add_argument("--url", default="",
                        help="the server's base URL (http://H:P; with --cluster: its dispatch)")
    direct.add_argument("--admin-url", default="",
                        help="its admin port, for /metrics (default: --url's port + 1)")
    direct.add_argument(
        "--data-dir", default="",
        help="the server's data dir (tokens are minted with its key; CHATPLANE_TOKEN_SECRET "
        "or CHATPLANE_TOKEN_KEYS in the environment win, as for the server; with --cluster: "
        "the cluster's)",
    )
    direct.add_argument(
        "--receiver-url", default="",
        help="across regions: the receivers log in at this server (another region peered "
        "with --url's, sharing its token key: give it as CHATPLANE_TOKEN_SECRET); "
        "default: --url",
    )
    direct.add_argument(
        "--receiver-admin-url", default="",
        help="its admin port, where the replication lag is sampled from /metrics "
        "(default: --receiver-url's port + 1)",
    )
    direct.add_argument("--pairs", type=int, default=100, help="P (default 100)")
    direct.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="R: offered msgs/s, all pairs together (default 2000)",
    )
    direct.add_argument("--duration", type=float, default=20.0, help="D seconds (default 20)")
    direct.add_argument("--transport", choices=("ws", "tcp"), default=None,
                        help="ws or tcp (default: tcp for the lean client, ws for the SDK)")
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
    from chatplane.bench import (
        apply,
        archive,
        crossregion,
        failover,
        group,
        handshakes,
        hotcache,
        idle,
        invalidation,
        ladder,
        rollout,
        storm,
        web,
    )

    ladder.add_arguments(direct)
    direct.set_defaults(func=ladder.run_direct_command)

    handshakes.add_parser(workloads)
    group.add_parser(workloads)
    idle.add_parser(workloads)
    storm.add_parser(workloads)
    rollout.add_parser(workloads)
    apply.add_parser(workloads)
    web.add_parser(workloads)
    hotcache.add_parser(workloads)
    archive.add_parser(workloads)
    invalidation.add_parser(workloads)
    crossregion.add_parser(workloads)
    failover.add_parser(workloads)
