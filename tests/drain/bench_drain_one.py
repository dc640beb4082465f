"""Benchmark (not collected by pytest): the orchestrator drains one gateway holding
`--clients` connections at `--rate` conn/s, with chat traffic judged by the delivery checker.

    python -m tests.drain.bench_drain_one --clients 10000 --rate 1000

Real processes (`chatplane.cluster.Cluster`: 2 gateways, 1 im, 1 state, ipconf, its own
redis-server). gw-2 is held down while the clients connect, so all of them land on gw-1;
then gw-2 comes up and the orchestrator rolls gw-1 alone. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from chatplane.bench.idle import connect_all, heartbeats
from chatplane.bench.rollout import LoginRate
from chatplane.cluster import Cluster
from chatplane_operator import drain
from tests.cluster.conftest import FAST, Chat
from tests.drain.fleet_cluster import ClusterFleet
from tests.drain.test_drain_rollout_processes import chat_until


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    cluster = Cluster(workdir, gateways=2, ims=1, states=1, env=dict(FAST))
    cluster.start(timeout_s=60)
    try:
        cluster.kill("gw-2")
        await asyncio.sleep(3.0)  # its registry entry expires (TTL 2 s)
        idle, dispatcher, connect_s = await connect_all(
            cluster.dispatch_url, cluster.signer, args.clients, args.connect_rate, "b",
            timeout_s=300)
        beat = asyncio.get_running_loop().create_task(heartbeats(idle, 5.0))
        chat = Chat()
        await chat.open(cluster, pairs=args.pairs, tag="b")
        cluster.start_member("gw-2", wait_s=60)
        fleet = ClusterFleet(cluster, "v1")
        fleet.names = ["gw-1"]
        policy = drain.Policy(rate=args.rate, deadline_s=120, ready_timeout_s=60)
        meter = LoginRate(idle, every_s=0.05)
        stop = asyncio.Event()
        tasks = [asyncio.get_running_loop().create_task(meter.run(stop)),
                 asyncio.get_running_loop().create_task(chat_until(chat, stop))]
        await asyncio.sleep(1.0)
        began = time.monotonic()
        outcome = await drain.Orchestrator(fleet, "v2", policy).run(timeout_s=300)
        took = time.monotonic() - began
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while sum(c.logins < 2 for c in idle) and loop.time() < deadline:
            await asyncio.sleep(0.1)  # every moved client logged in again (on gw-2)
        back_s = time.monotonic() - began
        stop.set()
        await asyncio.gather(*tasks)
        await chat.settle(120)
        verdict = chat.checker.verdict()
        drained_s = next((float(m.split(" after ")[1].split("s")[0])
                          for r, m in outcome.events if r == "GatewayReplaced"), None)
        result = {
            "clients": args.clients, "rate": args.rate, "connect_s": round(connect_s, 1),
            "on_gateway": fleet.connections_at_drain.get("gw-1"),
            "drain_s": drained_s, "rollout_s": round(took, 1),
            "all_back_s": round(back_s, 1), "not_back": sum(c.logins < 2 for c in idle),
            "peak_logins_per_s": meter.peak_per_second(window_s=1.0), "logins": meter.total(),
            "lost_dup_reordered_ok": verdict.ok, "verdict": verdict.summary(),
        }
        beat.cancel()
        await chat.close()
        await asyncio.gather(*(c.close() for c in idle))
        await dispatcher.close()
        return result
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connect-rate", type=float, default=500.0)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatplane-drain-bench-") as tmp:
        print(json.dumps(asyncio.run(bench(args, Path(tmp)))))


if __name__ == "__main__":
    main()
