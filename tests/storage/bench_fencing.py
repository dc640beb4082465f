"""What the sequencing lease costs at the storage: append latency with and
without a fence (alternating runs on fresh conversations), and `acquire`.

    python -m tests.storage.bench_fencing --storage sqlite --messages 500
    python -m tests.storage.bench_fencing --storage scylla --cql-hosts 127.0.0.1:9042

SQLite runs in shared mode (as under `cluster up`) with synchronous=NORMAL in
a temporary folder; CQL in a fresh keyspace with the default bucket sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from chatplane.storage.base import SendRequest, Storage


async def open_storage(args: argparse.Namespace) -> Storage:
    if args.storage == "sqlite":
        from chatplane.storage.sqlite import SqliteStorage

        storage: Storage = SqliteStorage(Path(tempfile.mkdtemp()) / "bench.db",
                                         synchronous="NORMAL", shared=True)
    else:
        from chatplane.storage import migrations
        from chatplane.storage.cql import CqlSettings
        from chatplane.storage.scylla import ScyllaStorage

        host, _, port = args.cql_hosts.partition(":")
        settings = CqlSettings(hosts=(host,), port=int(port or 9042),
                               keyspace=f"bench_{uuid.uuid4().hex[:10]}")
        await migrations.migrate(settings)
        storage = ScyllaStorage(settings)
    await storage.open()
    return storage


async def appends(storage: Storage, tag: str, fenced: bool, count: int) -> list[float]:
    users = (f"a{tag}", f"b{tag}")
    conv = (await storage.ensure_direct(*users, 1)).conversation_id
    fence = await storage.acquire(conv, "im-1") if fenced else None
    out = []
    for cid in range(1, count + 1):
        request = SendRequest(conversation_id=conv, sender=users[1], sender_device="p", cid=cid,
                              text="x", message_id=uuid.uuid4().hex, sent_at_ms=1, fence=fence)
        began = time.perf_counter()
        await storage.append(request, users)
        out.append((time.perf_counter() - began) * 1000)
    return out


def line(name: str, values: list[float]) -> str:
    values = sorted(values)
    p99 = values[max(0, int(len(values) * 0.99) - 1)]
    return (f"{name:10s} n={len(values)} median={statistics.median(values):.2f} ms"
            f" p99={p99:.2f} ms")


async def run(args: argparse.Namespace) -> None:
    storage = await open_storage(args)
    try:
        results: dict[str, list[float]] = {"unfenced": [], "fenced": []}
        for i, fenced in enumerate((False, True, False, True)):
            results["fenced" if fenced else "unfenced"] += await appends(
                storage, str(i), fenced, args.messages)
        conv = (await storage.ensure_direct("x", "y", 1)).conversation_id
        taken = []
        for i in range(args.acquires):
            began = time.perf_counter()
            await storage.acquire(conv, f"im-{i % 2}")
            taken.append((time.perf_counter() - began) * 1000)
        for name, values in results.items():
            print(f"{args.storage} append {line(name, values)}")
        print(f"{args.storage} {line('acquire', taken)}")
    finally:
        await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", choices=("sqlite", "scylla"), default="sqlite")
    parser.add_argument("--cql-hosts", default="127.0.0.1:9042")
    parser.add_argument("--messages", type=int, default=300, help="appends per run (4 runs)")
    parser.add_argument("--acquires", type=int, default=50)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
