"""W2, `chatplane bench group`: one large group, every member online.

Creates a group of M members through the admin API (the server's data dir
holds its secret and the token key), brings every member online, then S
senders send K messages `--interval-ms` apart (on a schedule: a slow ack does
not slow the rate). Reports, per message, the time from the send call until
the last member had it (p50, p90, max), deliveries per second, the members
that did not get a contiguous run exactly once and in order, and the
server's CPU and memory (from its /metrics).

The members are either real SDK clients spread over P worker processes
(`--crowd sdk`, `chatplane.bench.crowd`) or lean Go protocol clients
(`--crowd go`, `chatplane.bench.crowdgo`), which cost the machine a small
fraction of what the server spends on them, so the figures are the
server's. 1:1 latency beside the sending group (issue 6's must-hold) is
measured by a harness outside the package, `python3 -m tests.tools.beside`,
that runs this command and `bench direct` side by side; it waits for the
"sending" line this command prints on stderr.

Against `chatplane cluster up`, `--url` is the dispatch (ipconf) URL,
`--admin-url` an im instance's admin URL (the admin API) and `--metrics-url`
the admin URL of the process whose /metrics is read (the state instance: its
`chatplane_group_fanout_seconds` is the cluster's fan-out per flush).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner
from chatplane.bench import crowdgo, scrape
from chatplane.client import Client
from chatplane.supervision import watched

BATCH = 1000  # the admin API adds at most this many users per call


def add_parser(workloads: argparse._SubParsersAction) -> None:
    group = workloads.add_parser(
        "group",
        help="W2: one large group, every member online",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group.add_argument("--url", required=True)
    group.add_argument("--data-dir", required=True)
    group.add_argument("--admin-url", default="",
                       help="the admin API's base URL (default: --url's port + 1)")
    group.add_argument("--metrics-url", default="",
                       help="whose /metrics to read, an admin port (default: --admin-url)")
    group.add_argument("--members", type=int, default=10_000, help="M (default 10000)")
    group.add_argument("--senders", type=int, default=5, help="S (default 5)")
    group.add_argument("--messages", type=int, default=None,
                       help="K (default 20)")
    group.add_argument("--interval-ms", type=float, default=200.0,
                       help="between two sends (default 200; 0: each after the previous ack)")
    group.add_argument("--crowd", choices=("sdk", "go"), default="sdk",
                       help="the members: SDK clients, or lean Go clients (built on first use)")
    group.add_argument("--procs", type=int, default=None,
                       help="crowd worker processes (default: 4 for sdk, 1 for go)")
    group.add_argument("--crowd-cores", type=int, default=1,
                       help="--crowd go: cores each worker may use (GOMAXPROCS, default 1)")
    group.add_argument("--crowd-nice", type=int, default=0, metavar="N",
                       help="run the Go crowd at this nice value (it stands for devices on other "
                            "machines: 10 or more keeps it from taking CPU from the server and "
                            "any 1:1 clients beside it)")
    group.add_argument("--cut-every", type=float, default=0.0, metavar="S",
                       help="--crowd go, chaos: every S seconds cut some members' connections")
    group.add_argument("--cut-fraction", type=float, default=0.1, metavar="F",
                       help="share of the members cut each time (default 0.1)")
    group.add_argument("--deadline", type=float, default=120.0, help="seconds to wait")
    group.add_argument("--receipts", type=int, default=0, metavar="N",
                       help="then time N receipts() calls on the group (read/unread lists)")
    group.add_argument("--json", metavar="FILE")
    group.set_defaults(func=run_command)


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as r:
        return scrape.parse(await r.text())


async def _create_group(http: aiohttp.ClientSession, url: str, auth: dict[str, str],
                        senders: list[str], members: list[str]) -> tuple[str, int]:
    """The group, its members added in batches; its id and head seq."""
    async with http.post(url + "/v1/admin/groups", headers=auth, json={
            "name": "w2", "owner": senders[0],
            "members": senders[1:] + members[: BATCH - len(senders)]}) as r:
        if r.status != 201:
            raise SystemExit(f"cannot create the group: {r.status} {await r.text()}")
        group = (await r.json())["conversation_id"]
    head = 1
    for k in range(BATCH - len(senders), len(members), BATCH):
        async with http.post(f"{url}/v1/admin/groups/{group}/members", headers=auth,
                             json={"add": members[k: k + BATCH]}) as r:
            head = (await r.json())["seq"]
    return group, head


async def _start_crowd(args: argparse.Namespace, url: str, members: list[str], prefix: str,
                       group: str, expect: int, deadline_s: float,
                       transport: str) -> list[asyncio.subprocess.Process]:
    per = -(-len(members) // args.procs)
    chunks = [members[i * per: (i + 1) * per] for i in range(args.procs)]
    workers = []
    signer = TokenSigner.from_data_dir(Path(args.data_dir)) if args.crowd == "go" else None
    for chunk in filter(None, chunks):
        if signer is not None:
            tokens = [(m, signer.mint(m, "phone")) for m in chunk]
            workers.append(await crowdgo.start(args.crowd_binary, url, tokens, group, expect,
                                               deadline_s, args.crowd_cores, args.cut_every,
                                               args.cut_fraction, args.crowd_nice))
        else:
            first = int(chunk[0].rsplit("x", 1)[1])
            workers.append(await asyncio.create_subprocess_exec(*watched([
                sys.executable, "-m", "chatplane.bench.crowd", url, str(args.data_dir),
                str(first), str(len(chunk)), group, str(expect), str(deadline_s), prefix,
                transport]), stdout=subprocess.PIPE, limit=crowdgo.RESULT_LIMIT))
    return workers


async def _send(clients: list[Client], group: str, count: int, interval_ms: float) -> dict[int, float]:
    """K sends on a schedule (or back to back when interval is 0); seq -> send time."""
    sent: dict[int, float] = {}

    async def one(i: int) -> None:
        t = time.time()
        ack = await clients[i % len(clients)].send_text(group, f"w2-{i}")
        sent[ack.seq] = t

    if not interval_ms:
        for i in range(count):
            await one(i)
        return sent
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(count):
        delay = start + i * interval_ms / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return sent


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/")
    admin_url = scrape.admin_url(url, args.admin_url)
    metrics_url = scrape.admin_url(url, args.metrics_url or args.admin_url)
    data_dir = Path(args.data_dir)
    secret = (data_dir / ADMIN_SECRET_FILE).read_text().strip()
    auth = {"Authorization": f"Bearer {secret}"}
    run_id = f"{int(time.time()) % 100000}"
    prefix = f"w2m{run_id}x"
    members = [f"{prefix}{i}" for i in range(args.members)]
    senders = [f"w2s{run_id}x{i}" for i in range(args.senders)]
    messages = 20 if args.messages is None else args.messages
    async with aiohttp.ClientSession() as http:
        group, head = await _create_group(http, admin_url, auth, senders, members)
        signer = TokenSigner.from_data_dir(data_dir)
        clients = [Client(url, signer.mint(s, "bench")) for s in senders]
        for c in clients:
            await c.connect()
        expect = head + messages
        async with http.get(url + "/v1/dispatch") as r:
            endpoints = (await r.json())["endpoints"]
        transport = "tcp" if endpoints and endpoints[0].get("tcp") else "ws"
        started = time.monotonic()
        workers = await _start_crowd(args, url, members, prefix, group, expect, args.deadline,
                                     transport)
        for w in workers:
            assert w.stdout is not None
            await w.stdout.readline()
        connect_s = time.monotonic() - started
        print(f"{args.members} members online in {connect_s:.1f} s", file=sys.stderr, flush=True)
        load_before = load_average()
        before = await _metrics(http, metrics_url)
        print(f"sending {messages} messages", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        sent = await _send(clients, group, messages, args.interval_ms)
        send_s = time.monotonic() - t0
        outs = []
        for w in workers:
            assert w.stdout is not None
            outs.append(json.loads(await w.stdout.readline()))
            await asyncio.wait_for(w.wait(), 30)
        elapsed = time.monotonic() - t0
        after = await _metrics(http, metrics_url)
        load_after = load_average()
        receipts_ms = []
        for i in range(args.receipts):
            seq = sorted(sent)[i % len(sent)]
            r0 = time.perf_counter()
            answer = await clients[0].receipts(group, seq)
            receipts_ms.append((time.perf_counter() - r0) * 1000)
            assert len(answer.read) + len(answer.unread) >= args.members
        for c in clients:
            await c.close()
    latencies = []
    for seq, t in sorted(sent.items()):
        last = max(o["last_arrival"].get(str(seq), 0.0) for o in outs)
        latencies.append((last - t) * 1000 if last else float("inf"))
    finite = sorted(x for x in latencies if x != float("inf"))
    cpu = scrape.delta(before, after, "chatplane_process_cpu_seconds_total")
    result: dict[str, Any] = {
        "workload": "W2 group",
        "members": args.members,
        "senders": args.senders,
        "messages": messages,
        "interval_ms": args.interval_ms,
        "crowd": args.crowd,
        "procs": args.procs,
        "transport": transport if args.crowd == "sdk" else "tcp",
        "connect_s": round(connect_s, 1),
        "send_rate": round(messages / send_s, 1) if send_s else None,
        "last_member_ms": _distribution(finite, latencies),
        "deliveries": args.members * messages,
        "deliveries_per_s": round(args.members * messages / elapsed),
        "members_not_clean": sum(o["bad"] for o in outs),
        "missing_messages": sum(1 for x in latencies if x == float("inf")),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_pct": round(100 * cpu / elapsed) if elapsed else None,
        "server_rss_mib": round(after.get("chatplane_process_rss_bytes", 0) / 2**20, 1),
        # the server's own part: from a flush's start to the frame queued for
        # the last member (the rest of last_member_ms is the network and clients)
        # the histograms are in seconds; the report keeps milliseconds
        "server_fanout_ms_mean": scrape.mean(before, after, "chatplane_group_fanout_seconds",
                                             scale=1000),
        "server_fanout_held_ms_mean": scrape.mean(
            before, after, "chatplane_group_fanout_held_seconds", scale=1000),
        "server_fanout_cpu_ms_mean": scrape.mean(before, after,
                                                 "chatplane_group_fanout_cpu_seconds", scale=1000),
        "server_fanouts": scrape.delta(before, after, "chatplane_group_fanout_seconds_count"),
        # sockets the group writer thread wrote, and those the loop took back from it
        "server_writer_sockets": scrape.delta(before, after, "chatplane_group_writer_sockets_total"),
        "server_writer_reclaimed": scrape.delta(before, after, "chatplane_group_writer_reclaimed_total"),
        "load_average": [load_before, load_after],
        "crowd_stats": _crowd_stats(outs),
        "receipts_ms": {
            "calls": len(receipts_ms),
            "p50": round(statistics.median(receipts_ms), 1) if receipts_ms else None,
            "p99": round(sorted(receipts_ms)[int(0.99 * (len(receipts_ms) - 1))], 1) if receipts_ms else None,
        },
    }
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _distribution(finite: list[float], latencies: list[float]) -> dict[str, Any]:
    def pick(q: float) -> float | None:
        return round(finite[int(q * (len(finite) - 1))], 1) if finite else None

    return {
        "p50": round(statistics.median(finite), 1) if finite else None,
        "p90": pick(0.9),
        "max": round(finite[-1], 1) if finite else None,
        "all": [round(x, 1) for x in latencies] if len(latencies) <= 100 else "omitted",
    }


def _crowd_stats(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' protocol counters summed (the Go crowd reports them), with
    the crowd's own CPU; 'bad_samples' from the first worker that has some."""
    skip = {"bad", "clients", "starts", "last_arrival", "bad_samples", "last_error", "crowd_elapsed_s"}
    stats: dict[str, Any] = {}
    for out in outs:
        for key, value in out.items():
            if key not in skip and isinstance(value, int | float):
                stats[key] = round(stats.get(key, 0) + value, 2)
        if out.get("bad_samples") and "bad_samples" not in stats:
            stats["bad_samples"] = out["bad_samples"]
        if out.get("last_error"):
            stats["last_error"] = out["last_error"]
    return stats


def run_command(args: argparse.Namespace) -> int:
    if args.procs is None:
        args.procs = 1 if args.crowd == "go" else 4
    if args.cut_every and args.crowd != "go":
        print("bench group: --cut-every needs --crowd go", file=sys.stderr)
        return 2
    if args.crowd == "go":
        try:
            args.crowd_binary = crowdgo.binary()
        except crowdgo.CrowdUnavailable as exc:
            print(f"bench group: {exc}", file=sys.stderr)
            return 2
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    clean = result["members_not_clean"] == 0 and result["missing_messages"] == 0
    print("result       " + ("CLEAN" if clean else "FAILED"))
    return 0 if clean else 1
