"""W2, `chatplane bench group`: one large group, every member online.

Creates a group of M members through the admin API (the server's data dir
holds its secret and the token key), brings every member online as a real
SDK client spread over P worker processes (`chatplane.bench.crowd`), then S
senders send K messages `--interval-ms` apart. Reports, per message, the time
from the send call until the last member had it (p50, p90, max), deliveries
per second, the members that did not get a contiguous run exactly once and in
order, and the server's CPU and memory (from its /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner
from chatplane.client import Client

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
    group.add_argument("--members", type=int, default=10_000, help="M (default 10000)")
    group.add_argument("--senders", type=int, default=5, help="S (default 5)")
    group.add_argument("--messages", type=int, default=20, help="K (default 20)")
    group.add_argument(
        "--interval-ms",
        type=float,
        default=200.0,
        help="between two sends (default 200; 0: as fast as acked)",
    )
    group.add_argument("--procs", type=int, default=4, help="client worker processes")
    group.add_argument("--deadline", type=float, default=120.0, help="seconds to wait")
    group.add_argument(
        "--receipts",
        type=int,
        default=0,
        metavar="N",
        help="then time N receipts() calls on the group (read/unread lists)",
    )
    group.add_argument("--json", metavar="FILE")
    group.set_defaults(func=run_command)


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.url.rstrip("/")
    data_dir = Path(args.data_dir)
    secret = (data_dir / ADMIN_SECRET_FILE).read_text().strip()
    auth = {"Authorization": f"Bearer {secret}"}
    run_id = f"{int(time.time()) % 100000}"
    members = [f"w2m{run_id}x{i}" for i in range(args.members)]
    senders = [f"w2s{run_id}x{i}" for i in range(args.senders)]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + "/v1/admin/groups",
            headers=auth,
            json={
                "name": "w2",
                "owner": senders[0],
                "members": senders[1:] + members[: BATCH - len(senders)],
            },
        ) as r:
            if r.status != 201:
                raise SystemExit(f"cannot create the group: {r.status} {await r.text()}")
            group = (await r.json())["conversation_id"]
        head = 1
        for k in range(BATCH - len(senders), len(members), BATCH):
            async with http.post(
                f"{url}/v1/admin/groups/{group}/members", headers=auth, json={"add": members[k : k + BATCH]}
            ) as r:
                head = (await r.json())["seq"]
        signer = TokenSigner.from_data_dir(data_dir)
        clients = [Client(url, signer.mint(s, "bench")) for s in senders]
        for c in clients:
            await c.connect()
        expect = head + args.messages
        async with http.get(url + "/v1/dispatch") as r:
            endpoints = (await r.json())["endpoints"]
        transport = "tcp" if endpoints and endpoints[0].get("tcp") else "ws"
        per = -(-len(members) // args.procs)
        started = time.monotonic()
        workers = []
        for i in range(args.procs):
            chunk = members[i * per : (i + 1) * per]
            if not chunk:
                continue
            first = int(chunk[0].rsplit("x", 1)[1])
            workers.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "chatplane.bench.crowd",
                    url,
                    str(data_dir),
                    str(first),
                    str(len(chunk)),
                    group,
                    str(expect),
                    str(args.deadline),
                    f"w2m{run_id}x",
                    transport,
                    stdout=subprocess.PIPE,
                )
            )
        for w in workers:
            assert w.stdout is not None
            await w.stdout.readline()
        connect_s = time.monotonic() - started
        before = await _metrics(http, url)
        t0 = time.monotonic()
        sent: dict[int, float] = {}
        for i in range(args.messages):
            t = time.time()
            ack = await clients[i % len(clients)].send_text(group, f"w2-{i}")
            sent[ack.seq] = t
            if args.interval_ms:
                await asyncio.sleep(args.interval_ms / 1000)
        outs = []
        for w in workers:
            assert w.stdout is not None
            outs.append(json.loads(await w.stdout.readline()))
            await asyncio.wait_for(w.wait(), 30)
        elapsed = time.monotonic() - t0
        after = await _metrics(http, url)
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
    cpu = after.get("chatplane_process_cpu_seconds_total", 0) - before.get(
        "chatplane_process_cpu_seconds_total", 0
    )
    return {
        "workload": "W2 group",
        "members": args.members,
        "senders": args.senders,
        "messages": args.messages,
        "interval_ms": args.interval_ms,
        "procs": args.procs,
        "transport": transport,
        "connect_s": round(connect_s, 1),
        "last_member_ms": {
            "p50": round(statistics.median(finite), 1) if finite else None,
            "p90": round(finite[int(0.9 * (len(finite) - 1))], 1) if finite else None,
            "max": round(finite[-1], 1) if finite else None,
            "all": [round(x, 1) for x in latencies],
        },
        "deliveries": args.members * args.messages,
        "deliveries_per_s": round(args.members * args.messages / elapsed),
        "members_not_clean": sum(o["bad"] for o in outs),
        "missing_messages": sum(1 for x in latencies if x == float("inf")),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_pct": round(100 * cpu / elapsed) if elapsed else None,
        "server_rss_mib": round(after.get("chatplane_process_rss_bytes", 0) / 2**20, 1),
        # the server's own part: from a flush's start to the frame queued for
        # the last member (the rest of last_member_ms is the network and clients)
        "server_fanout_ms_mean": _mean_delta(before, after, "chatplane_group_fanout_ms"),
        "receipts_ms": {
            "calls": len(receipts_ms),
            "p50": round(statistics.median(receipts_ms), 1) if receipts_ms else None,
            "p99": round(sorted(receipts_ms)[int(0.99 * (len(receipts_ms) - 1))], 1) if receipts_ms else None,
        },
    }


def _mean_delta(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return round(total / count, 1) if count else None


def run_command(args: argparse.Namespace) -> int:
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    clean = result["members_not_clean"] == 0 and result["missing_messages"] == 0
    print("result       " + ("CLEAN" if clean else "FAILED"))
    return 0 if clean else 1
