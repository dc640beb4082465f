"""`chatplane bench regions`: cross-region send-to-deliver latency, what forwarding
and `sync` durability add, and the replication lag under W1.

Two regions A and B: the ones the user points at (`--url A --peer-url B`: running,
peered, sharing a token key), or, without `--url`, two local `chatplane up`
regions (eu = A, us = B) that the bench starts itself (`localregions.py`), once
per `--durability` mode, with `--rtt-ms` of round-trip time injected on their
cross-region link by a delay proxy per direction (`delayproxy.py`); clients
always talk to their own region directly. On each pair of regions it runs W1
(`direct.py`, the lean raw-TCP client) in phases, fresh users each:

- `local`: senders and receivers both in A, chats homed in A (the baseline);
- `replicated`: senders in A, where each chat is homed (its first send), receivers
  in B: every message crosses by replication;
- `forwarded`: senders in B, receivers in A, each chat homed in A by its
  receiver's first send: every send goes to A (`Region.Send`), its ack back to B;
- `lag`: `replicated` at `--lag-rate` (default 1,000 msgs/s).

During each phase every region's `/v1/peers` is sampled (`peerlag.py`). It
prints a table per mode and phase (send->receipt and send->ack p50 / p99, the
lag), what each cross-region phase adds to `local`, and, with two modes, what
`sync` adds to `async`; then the JSON (`report.emit`). The checker judges every
device of every phase; the exit code is 0 when every phase was clean.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatplane.bench import peerlag, procstat, report, scrape
from chatplane.bench.direct import Connector, DirectConfig, DirectRun, SetupError

PHASES = ("local", "replicated", "forwarded", "lag")
# where the token keys of running regions may come from (as `chatplane token` reads them)
KEY_VARIABLES = ("CHATPLANE_TOKEN_SECRET", "CHATPLANE_TOKEN_KEYS", "CHATPLANE_TOKEN_KEYS_FILE")


@dataclass
class Region:
    """One region as the bench reaches it."""

    name: str
    url: str
    admin_url: str
    tcp: tuple[str, int]
    pid: int = 0  # a local process: its CPU is read from /proc


@dataclass
class Target:
    a: Region
    b: Region
    mint: Callable[[str, str], str]  # (user, device) -> token
    durability: str


def _connector(region: Region, mint: Callable[[str, str], str]) -> Connector:
    from chatplane.bench.leanclient import LeanClient

    host, port = region.tcp
    return lambda user, device: LeanClient(host, port, mint(user, device))


def _route(phase: str, t: Target) -> tuple[Region, Region, Region]:
    """(senders' region, receivers' region, home region) of a phase."""
    if phase == "local":
        return t.a, t.a, t.a
    if phase == "forwarded":
        return t.b, t.a, t.a
    return t.a, t.b, t.a


def run_phase(phase: str, t: Target, args: argparse.Namespace) -> dict[str, Any]:
    """One W1 run of `phase` on `t`, published (`report.finish`) with its lag."""
    from chatplane.bench.spread import run_loop

    send_in, receive_in, home = _route(phase, t)
    lag_phase = phase == "lag"
    cfg = DirectConfig(
        pairs=args.lag_pairs if lag_phase else args.pairs,
        rate=args.lag_rate if lag_phase else args.rate,
        duration=args.duration, window=max(1, args.window), drain_timeout=args.drain_timeout,
        home_at_receiver=phase == "forwarded",
        user_prefix=f"xr{secrets.token_hex(3)}",  # fresh users: no history from earlier runs
    )

    def on_progress(snap: dict[str, Any]) -> None:
        if not args.quiet:
            report.print_progress(snap)

    if not args.quiet:
        print(f"{t.durability} {phase}: senders in {send_in.name}, receivers in "
              f"{receive_in.name}, homed in {home.name}, {cfg.rate:g} msgs/s over {cfg.pairs} "
              f"pairs for {cfg.duration:g} s", file=sys.stderr, flush=True)
    pids = {r.name: r.pid for r in (t.a, t.b) if r.pid}
    cpu0 = {name: procstat.cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
    load = procstat.loadavg()
    run = DirectRun(cfg, _connector(send_in, t.mint), on_progress,
                    _connector(receive_in, t.mint))
    with peerlag.LagSampler({r.name: r.admin_url for r in (t.a, t.b)}) as sampler:
        result = run_loop(run.run(), not args.no_uvloop)
    pub = report.finish(result, {"transport": "tcp", "client": "lean", "procs": 1,
                                 "window": cfg.window, "requested_duration_s": cfg.duration})
    pub.update(workload=f"regions {phase}", phase=phase, durability=t.durability,
               sender_region=send_in.name, receiver_region=receive_in.name,
               home_region=home.name, loadavg_before=load, loadavg_after=procstat.loadavg(),
               peer_lag=sampler.summary(), latency_buckets=result.get("latency", {}),
               label=f"{t.durability} {phase} ({send_in.name}->{receive_in.name})")
    if pids:
        pub["region_cpu_s"] = {name: round((procstat.cpu_seconds(pid) or 0.0) - cpu0[name], 2)
                               for name, pid in pids.items()}
    return pub


def _lag_cell(pub: dict[str, Any]) -> str:
    cells = []
    for direction, row in sorted(pub.get("peer_lag", {}).items()):
        if row["max"] or direction.startswith(pub["receiver_region"] + "<-"):
            secs = "" if row["max_s"] is None else f" ({row['p50_s']}/{row['max_s']} s)"
            cells.append(f"{direction} {row['p50']}/{row['max']}{secs}")
    return "; ".join(cells) or "-"


def adds(phases: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """What each cross-region phase adds to `local`, in ms (p50 and p99 deltas)."""
    base = phases.get("local")
    out: dict[str, dict[str, float]] = {}
    if base is None:
        return out
    for phase in ("replicated", "forwarded"):
        pub = phases.get(phase)
        if pub is None:
            continue
        out[phase] = {f"{kind}_{p}_ms": round(pub[key][f"{p}_ms"] - base[key][f"{p}_ms"], 1)
                      for kind, key in (("receipt", "latency_ms"), ("ack", "ack_latency_ms"))
                      for p in ("p50", "p99")}
    return out


def table(modes: dict[str, dict[str, Any]]) -> str:
    lines = ["mode   phase       send->receive (home)  offered/s  sent/s  kept_up  "
             "receipt p50/p99 ms   ack p50/p99 ms   lag p50/max entries (s)   checker  load"]
    for mode, run in modes.items():
        for phase, pub in run["phases"].items():
            lat, ack = pub["latency_ms"], pub["ack_latency_ms"]
            route = f"{pub['sender_region']}->{pub['receiver_region']} ({pub['home_region']})"
            lines.append(
                f"{mode:6} {phase:11} {route:21} {pub['offered_rate']:>9g} "
                f"{pub['send_rate']:>7g}  {'yes' if pub['kept_up'] else 'NO':>7}  "
                f"{lat['p50_ms']:>8}/{lat['p99_ms']:<9} {ack['p50_ms']:>7}/{ack['p99_ms']:<8} "
                f"{_lag_cell(pub):25} {'clean' if pub['clean'] else 'FAILED':7}  "
                f"{pub['loadavg_before']}")
        for phase, delta in run["adds"].items():
            lines.append(f"{mode:6} {phase} adds to local: receipt p50 {delta['receipt_p50_ms']:+g} "
                         f"p99 {delta['receipt_p99_ms']:+g} ms; ack p50 {delta['ack_p50_ms']:+g} "
                         f"p99 {delta['ack_p99_ms']:+g} ms")
    if {"sync", "async"} <= modes.keys():
        for phase in modes["sync"]["phases"]:
            s, a = modes["sync"]["phases"][phase], modes["async"]["phases"].get(phase)
            if a is not None:
                ack = s["ack_latency_ms"]["p50_ms"] - a["ack_latency_ms"]["p50_ms"]
                receipt = s["latency_ms"]["p50_ms"] - a["latency_ms"]["p50_ms"]
                lines.append(f"sync adds to async, {phase}: ack p50 {ack:+.1f} ms, "
                             f"receipt p50 {receipt:+.1f} ms")
    for mode, run in modes.items():
        for phase, pub in run["phases"].items():
            lines.append(f"{mode} {phase}: {pub['verdict_summary']}")
    return "\n".join(lines)


def _phases(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise SetupError(f"--phases takes some of {','.join(PHASES)}, got {text!r}")
    return chosen


def _run_target(t: Target, phases: list[str], args: argparse.Namespace) -> dict[str, Any]:
    done = {phase: run_phase(phase, t, args) for phase in phases}
    return {"phases": done, "adds": adds(done)}


def _pointed_at(args: argparse.Namespace, phases: list[str]) -> dict[str, dict[str, Any]]:
    import asyncio

    from chatplane.bench.leanclient import tcp_endpoint
    from chatplane.bench.spread import token_signer

    signer = token_signer(args.data_dir or ".")  # the environment's key set wins
    regions, reports = [], []
    for url, given in ((args.url, args.admin_url), (args.peer_url, args.peer_admin_url)):
        admin = scrape.admin_url(url, given)
        found = peerlag.read_peers(admin)
        if not found.get("region"):
            raise SetupError(f"{url}: no region at its admin port's /v1/peers ({admin})")
        reports.append(found)
        regions.append(Region(str(found["region"]), url, admin,
                              asyncio.run(tcp_endpoint(url)), _local_pid(url)))
    t = Target(regions[0], regions[1], signer.mint, durability_of(reports[0]))
    return {t.durability: _run_target(t, phases, args)}


def durability_of(found: dict[str, Any]) -> str:
    """The durability mode a region's /v1/peers names (a peer's
    `replication.confirmations.durability`), or "unknown"."""
    for peer in found.get("peers", []):
        confirmations = (peer.get("replication") or {}).get("confirmations") or {}
        if confirmations.get("durability"):
            return str(confirmations["durability"])
    return "unknown"


def _local_pid(url: str) -> int:
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname in ("127.0.0.1", "localhost", "::1") and parsed.port:
        return procstat.listener_pid(parsed.port) or 0
    return 0


def _started(args: argparse.Namespace, phases: list[str]) -> dict[str, dict[str, Any]]:
    from chatplane.auth import TokenSigner
    from chatplane.bench import localregions

    signer = TokenSigner(localregions.KEY)
    modes: dict[str, dict[str, Any]] = {}
    for mode in [m.strip() for m in args.durability.split(",") if m.strip()]:
        with tempfile.TemporaryDirectory(prefix="bench-regions-") as tmp, \
                localregions.LocalRegions(Path(tmp), durability=mode,
                                          rtt_ms=args.rtt_ms) as local:
            eu, us = (Region(r.name, r.url, r.admin_url, ("127.0.0.1", r.tcp_port), r.pid)
                      for r in (local["eu"], local["us"]))
            modes[mode] = _run_target(Target(eu, us, signer.mint, mode), phases, args)
    return modes


def run_command(args: argparse.Namespace) -> int:
    if args.pairs < 1 or args.lag_pairs < 1 or args.rate <= 0 or args.lag_rate <= 0 \
            or args.duration <= 0 or args.rtt_ms < 0:
        print("chatplane bench regions: --pairs, --lag-pairs, --rate, --lag-rate and "
              "--duration must be positive, --rtt-ms not negative", file=sys.stderr)
        return 2
    keyed = args.data_dir or any(os.environ.get(k) for k in KEY_VARIABLES)
    if bool(args.url) != bool(args.peer_url) or (args.url and (args.rtt_ms or not keyed)):
        print("chatplane bench regions: give --url and --peer-url of two running regions "
              "(and their shared token key: CHATPLANE_TOKEN_SECRET or --data-dir), or neither "
              "(the bench starts two); --rtt-ms needs the regions the bench starts",
              file=sys.stderr)
        return 2
    if not args.url and not set(args.durability.split(",")) <= {"sync", "async"}:
        print("chatplane bench regions: --durability takes sync, async or both", file=sys.stderr)
        return 2
    try:
        phases = _phases(args.phases)
        modes = _pointed_at(args, phases) if args.url else _started(args, phases)
    except (SetupError, RuntimeError, OSError) as exc:
        print(f"chatplane bench regions: {exc}", file=sys.stderr)
        return 1
    print(table(modes))
    rungs = [pub for run in modes.values() for pub in run["phases"].values()]
    if args.plots:
        from chatplane.bench import plots

        try:
            print("plots        " + plots.write_latency(rungs, args.plots, "regions-latency.png",
                                                        "cross-region W1 latency"))
        except plots.PlotsUnavailable as exc:
            print(f"chatplane bench regions: {exc}", file=sys.stderr)
            return 1
    for pub in rungs:
        pub.pop("latency_buckets", None)
    clean = all(pub["clean"] for pub in rungs)
    report.emit({"workload": "regions", "started_here": not args.url,
                 "rtt_ms": args.rtt_ms, "modes": modes, "clean": clean}, args.json)
    return 0 if clean else 1


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser(
        "regions", help="cross-region W1: local vs replicated vs forwarded latency, "
        "sync vs async, replication lag (two regions it starts, or two running ones)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="", help="region A's base URL (running regions; default: "
                   "the bench starts eu and us on this machine)")
    p.add_argument("--peer-url", default="", help="region B's base URL (peered with A)")
    p.add_argument("--admin-url", default="", help="A's admin port (default: --url's port + 1)")
    p.add_argument("--peer-admin-url", default="", help="B's admin port (default: port + 1)")
    p.add_argument("--data-dir", default="", help="with --url: a data dir whose token key "
                   "both regions share (not needed with CHATPLANE_TOKEN_SECRET or "
                   "CHATPLANE_TOKEN_KEYS[_FILE] in the environment, which win)")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip time injected on "
                   "the cross-region link of the regions the bench starts (a delay proxy "
                   "each way, RTT/2 each; default 0: no proxy)")
    p.add_argument("--durability", default="sync,async",
                   help="modes to start the regions in, one pair each (default sync,async)")
    p.add_argument("--phases", default=",".join(PHASES),
                   help=f"some of {','.join(PHASES)} (default all)")
    p.add_argument("--pairs", type=int, default=20, help="pairs per latency phase (default 20)")
    p.add_argument("--rate", type=float, default=200.0,
                   help="offered msgs/s of the latency phases (default 200)")
    p.add_argument("--lag-pairs", type=int, default=100, help="pairs of the lag phase "
                   "(default 100)")
    p.add_argument("--lag-rate", type=float, default=1000.0,
                   help="offered msgs/s of the lag phase (default 1000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    p.add_argument("--window", type=int, default=32, help="unacked sends per pair (default 32)")
    p.add_argument("--drain-timeout", type=float, default=15.0,
                   help="seconds for acks and deliveries after each phase (default 15)")
    p.add_argument("--plots", default="", metavar="DIR",
                   help="write regions-latency.png here (needs matplotlib)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    p.add_argument("--no-uvloop", action="store_true", help="use asyncio's own loop")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run_command)
