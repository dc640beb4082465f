"""A crowd of real SDK clients in one worker process (bench group, tests).

Run as `python -m chatplane.bench.crowd URL DATA_DIR FIRST COUNT CONVERSATION HEAD
DEADLINE_S [PREFIX [TRANSPORT]]`:
connects users <PREFIX><FIRST>..<PREFIX><FIRST+COUNT-1> (PREFIX, an optional last
argument, defaults to crowd) (device "phone"; TRANSPORT tcp by default, or ws),
prints `connected N`, then collects the conversation's messages until every
client has seq HEAD (or the deadline) and prints one JSON line: how many
clients did not get a contiguous run from where they joined up to HEAD, each
exactly once and in order; where the clients started (seq -> clients); and
for each seq the latest arrival time (time.time()) over the crowd.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp

from chatplane.auth import TokenSigner
from chatplane.client import Client


async def run(
    url: str,
    data_dir: str,
    first: int,
    count: int,
    conversation_id: str,
    expect: int,
    deadline_s: float,
    prefix: str = "crowd",
    transport: str = "tcp",
) -> None:
    signer = TokenSigner.from_data_dir(data_dir)
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    clients = [
        Client(
            url, signer.mint(f"{prefix}{first + i}", "phone"), transport=transport, http=http, heartbeat_s=30
        )
        for i in range(count)
    ]
    gate = asyncio.Semaphore(100)

    async def connect(client: Client) -> None:
        async with gate:
            await client.connect(timeout_s=60)

    await asyncio.gather(*(connect(c) for c in clients))
    print(f"connected {count}", flush=True)
    last_arrival: dict[int, float] = {}
    streams: list[list[int]] = [[] for _ in clients]
    done = asyncio.Event()
    finished = 0

    async def collect(i: int, client: Client) -> None:
        nonlocal finished
        async for m in client.messages():
            if m.conversation_id != conversation_id:
                continue
            streams[i].append(m.seq)
            now = time.time()
            if now > last_arrival.get(m.seq, 0):
                last_arrival[m.seq] = now
            if m.seq == expect:
                finished += 1
                if finished == len(clients):
                    done.set()

    tasks = [asyncio.create_task(collect(i, c)) for i, c in enumerate(clients)]
    try:
        await asyncio.wait_for(done.wait(), deadline_s)
    except TimeoutError:
        pass
    await asyncio.sleep(0.5)  # a duplicate would arrive now
    bad = [i for i, s in enumerate(streams) if not s or s != list(range(s[0], expect + 1))]
    starts: dict[int, int] = {}
    for stream in streams:
        if stream:
            starts[stream[0]] = starts.get(stream[0], 0) + 1
    print(
        json.dumps(
            {
                "clients": len(clients),
                "bad": len(bad),
                "starts": starts,
                "bad_samples": [[*streams[i][:5], "...", *streams[i][-5:]] for i in bad[:3]],
                "last_arrival": {str(k): v for k, v in sorted(last_arrival.items())},
            }
        ),
        flush=True,
    )
    for t in tasks:
        t.cancel()
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    await http.close()


# Connecting a worker's share of the crowd may take this long on a loaded machine.
CONNECT_BUDGET_S = 600.0


async def bounded(coro: Any, deadline_s: float) -> None:
    """Run a worker, but never past every budget: a worker that overran them exits
    instead of reconnecting to a server that is gone. (Its parent's death is the
    watchdog's business, `supervision.watched`: a check here could not run while the
    loop is blocked.)"""
    work = asyncio.ensure_future(coro)
    give_up = time.monotonic() + CONNECT_BUDGET_S + deadline_s + 30
    while not work.done():
        await asyncio.wait({work}, timeout=1.0)
        if time.monotonic() > give_up:
            print("crowd: budget spent, exiting", file=sys.stderr, flush=True)
            os._exit(3)
    work.result()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(bounded(run(a[0], a[1], int(a[2]), int(a[3]), a[4], int(a[5]), float(a[6]), *a[7:9]),
                        float(a[6])))
