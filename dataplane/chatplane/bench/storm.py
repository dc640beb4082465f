"""`chatplane bench storm`: C clients dropped at once, or a gateway drained.

C lean clients (`rawclient.RawClient`) plus P chatting pairs on the SDK,
whose every message is judged by the delivery checker. Then either every
connection is cut at once (`--drop`, the default: the whole crowd comes back
through dispatch together) or one gateway is drained at `--drain-rate`
(`--drain URL`). Reports the time until every client had logged in again,
the login rate the gateways absorbed, and the checker's verdict on the chat
traffic that ran throughout (lost / duplicated / reordered).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner
from chatplane.bench.idle import connect_all, heartbeats
from chatplane.bench.rawclient import RawClient
from chatplane.bench.report import emit
from chatplane.bench.spread import run_loop
from chatplane.checker import DeliveryChecker
from chatplane.client import Client


class Pair:
    def __init__(self, url: str, signer: TokenSigner, prefix: str, i: int, checker: DeliveryChecker,
                 ca: str | None = None) -> None:
        self.a, self.b = f"{prefix}a{i}", f"{prefix}b{i}"
        self.sender = Client(url, signer.mint(self.a, "phone"), ca=ca)
        self.receiver = Client(url, signer.mint(self.b, "phone"), ca=ca)
        self.checker = checker
        self.conv = ""
        self.acked = 0
        self.received = 0

    async def open(self) -> None:
        await self.sender.connect()
        await self.receiver.connect()
        self.conv = await self.sender.direct(self.b)
        for user in (self.a, self.b):
            self.checker.add_member(self.conv, user)
        self.checker.add_device(self.b, "phone")

    async def receive(self) -> None:
        async for m in self.receiver.messages():
            self.received += 1
            self.checker.record_receipt(self.b, "phone", m.conversation_id, m.seq, m.message_id)

    async def send(self, stop: asyncio.Event, every_s: float) -> None:
        i = 0
        while not stop.is_set():
            ack = await self.sender.send_text(self.conv, f"storm {i}")
            self.checker.record_ack(self.a, "phone", ack.conversation_id, ack.seq, ack.message_id)
            self.acked += 1
            i += 1
            await asyncio.sleep(every_s)


def drained(url: str) -> bool:
    """The gateway has no connection left (or has exited, as it does then)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/admin/drain", timeout=2) as response:
            return int(json.load(response).get("connections", 0)) == 0
    except OSError:
        return True


async def time_drain(url: str, began: float) -> float:
    while not await asyncio.to_thread(drained, url):
        await asyncio.sleep(0.05)
    return time.monotonic() - began


def post_drain(url: str, rate: float, deadline_s: float, secret: str) -> None:
    request = urllib.request.Request(
        url.rstrip("/") + "/admin/drain",
        method="POST",
        data=json.dumps({"rate": rate, "deadline_s": deadline_s}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


async def run_storm(args: argparse.Namespace) -> dict[str, Any]:
    signer = TokenSigner.from_data_dir(args.data_dir)
    prefix = f"st{secrets.token_hex(3)}-"
    clients, dispatcher, connect_s = await connect_all(
        args.url, signer, args.clients, args.connect_rate, prefix, args.timeout
    )
    beat = asyncio.get_running_loop().create_task(heartbeats(clients))
    checker = DeliveryChecker()
    pairs = [Pair(args.url, signer, prefix, i, checker) for i in range(args.pairs)]
    await asyncio.gather(*(p.open() for p in pairs))
    stop = asyncio.Event()
    tasks = [asyncio.get_running_loop().create_task(p.receive()) for p in pairs]
    tasks += [asyncio.get_running_loop().create_task(p.send(stop, 0.05)) for p in pairs]
    await asyncio.sleep(1.0)

    gateway_of = {c: c.gateway for c in clients}
    logins_before = {c: c.logins for c in clients}
    began = time.monotonic()
    drain_timer: asyncio.Task[float] | None = None
    if args.drain:
        moving = [c for c in clients if c.gateway == args.drain_id] if args.drain_id else clients
        secret = (Path(args.data_dir) / ADMIN_SECRET_FILE).read_text().strip()
        await asyncio.to_thread(post_drain, args.drain, args.drain_rate, args.timeout, secret)
        drain_timer = asyncio.get_running_loop().create_task(time_drain(args.drain, began))
    else:
        moving = clients
        for c in clients:
            c.drop()
        for p in pairs:
            p.sender.abort_connection()
            p.receiver.abort_connection()

    async def resumed(c: RawClient) -> float:
        await c.logged_in_more_than(logins_before[c])
        return time.monotonic() - began

    times = await asyncio.wait_for(asyncio.gather(*(resumed(c) for c in moving)), args.timeout)
    all_s = max(times) if times else 0.0
    drain_s = await asyncio.wait_for(drain_timer, args.timeout) if drain_timer else None
    await asyncio.sleep(args.after)
    stop.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while any(p.received < p.acked for p in pairs) and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    verdict = checker.verdict()
    for t in tasks:
        t.cancel()
    beat.cancel()
    moved = sum(1 for c in moving if c.gateway != gateway_of[c])
    result = {
        "clients": len(clients),
        "moved": len(moving),
        "changed_gateway": moved,
        "mode": f"drain at {args.drain_rate}/s" if args.drain else "drop all at once",
        "connect_all_s": round(connect_s, 2),
        "gateway_emptied_s": round(drain_s, 2) if drain_s is not None else None,
        "all_resumed_s": round(all_s, 2),
        "resume_p50_s": round(sorted(times)[len(times) // 2], 2) if times else 0.0,
        "logins_per_s": round(len(moving) / all_s, 1) if all_s else None,
        "chat_pairs": len(pairs),
        "chat_acked": sum(p.acked for p in pairs),
        "chat_clean": verdict.ok,
        "verdict": verdict.summary(),
    }
    for p in pairs:
        await p.sender.close()
        await p.receiver.close()
    await asyncio.gather(*(c.close() for c in clients))
    await dispatcher.close()
    return result


def run_storm_command(args: argparse.Namespace) -> int:
    try:
        result = run_loop(run_storm(args))  # uvloop: the crowd costs less
    except (OSError, TimeoutError) as exc:
        print(f"bench storm: {exc!r}", file=sys.stderr)
        return 1
    emit(result, args.json)
    return 0 if result["chat_clean"] else 1


def add_parser(workloads: argparse._SubParsersAction) -> None:
    storm = workloads.add_parser(
        "storm",
        help="reconnect storm: C clients dropped at once (or a gateway drained); time to resume, lost/dup",
    )
    storm.add_argument("--url", required=True, help="dispatch base URL (http://H:P)")
    storm.add_argument("--data-dir", required=True, help="where the token key is")
    storm.add_argument("--clients", type=int, default=10_000)
    storm.add_argument("--pairs", type=int, default=20, help="chatting SDK pairs (checked)")
    storm.add_argument("--connect-rate", type=float, default=1000.0)
    storm.add_argument("--drain", metavar="GATEWAY_ADMIN_URL",
                       help="drain this gateway instead (its admin port; the secret from --data-dir)")
    storm.add_argument("--drain-id", help="its gateway id (time only its clients)")
    storm.add_argument("--drain-rate", type=float, default=500.0)
    storm.add_argument("--after", type=float, default=1.0, help="traffic seconds after resume")
    storm.add_argument("--timeout", type=float, default=120.0)
    storm.add_argument("--json", metavar="FILE")
    storm.set_defaults(func=run_storm_command)
