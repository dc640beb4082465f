"""Three regions for tests: eu, us and ap, each a real `chatplane up` process with its
own SQLite store, in a full mesh of peers where every link (each region's calls to each
other region, and to the failover witness when there is one) goes through its own
`ChaosProxy`, so a test can cut any link and heal it; and what their stores hold."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.proxy import ChaosProxy
from tests.support.regions import START_S, RegionProcess, WitnessProcess, sees, wait_for

NAMES = ("eu", "us", "ap")


@dataclass
class Mesh:
    """The regions by name, the proxy each one dials each other through
    (`links[(caller, callee)]`), the witness and each region's proxy to it."""

    regions: dict[str, RegionProcess]
    links: dict[tuple[str, str], ChaosProxy]
    witness: WitnessProcess | None = None
    to_witness: dict[str, ChaosProxy] = field(default_factory=dict)

    def proxies(self) -> list[ChaosProxy]:
        return [*self.links.values(), *self.to_witness.values()]

    def cut(self, a: str, b: str) -> int:
        """Cut the link between `a` and `b` both ways (each still reaches the others);
        returns how many open connections were reset."""
        return self.links[(a, b)].block() + self.links[(b, a)].block()

    def heal(self) -> None:
        for proxy in self.proxies():
            proxy.unblock()

    async def all_see_each_other(self, timeout_s: float = 30) -> None:
        for me in self.regions.values():
            for other in self.regions:
                if other != me.name:
                    await asyncio.to_thread(wait_for, functools.partial(sees, me, other),
                                            timeout_s, f"{me.name} sees {other}")


@contextlib.asynccontextmanager
async def three_regions(base: Path, env: dict[str, str] | None = None, *,
                        witness: bool = False) -> AsyncIterator[Mesh]:
    """eu, us and ap peered with each other through proxies (with `env` added to each),
    and with `witness` a `chatplane witness` each reaches through its own proxy;
    started, and all stopped at the end (continued first if a test stopped one)."""
    regions = {name: RegionProcess(base / name, name, env=env) for name in NAMES}
    links = {(a, b): ChaosProxy("127.0.0.1", regions[b].grpc_port)
             for a in NAMES for b in NAMES if a != b}
    mesh = Mesh(regions, links)
    if witness:
        mesh.witness = WitnessProcess(base / "witness")
        mesh.to_witness = {name: ChaosProxy("127.0.0.1", mesh.witness.port) for name in NAMES}
    for proxy in mesh.proxies():
        await proxy.start()
    for name, region in regions.items():
        region.set_peers([{"name": other, "endpoint": f"127.0.0.1:{links[(name, other)].port}",
                           "datacenter": f"dc-{other}"}
                          for other in NAMES if other != name])
        if witness:
            region.env["CHATPLANE_FAILOVER_WITNESS"] = f"127.0.0.1:{mesh.to_witness[name].port}"
    try:
        if mesh.witness is not None:
            await asyncio.to_thread(mesh.witness.start)
        # three starting at once on a loaded 2-core machine took more than the usual 20 s
        await asyncio.gather(*(asyncio.to_thread(r.start, START_S) for r in regions.values()))
        yield mesh
    finally:
        for region in regions.values():
            if region.proc is not None and region.proc.poll() is None:
                os.kill(region.proc.pid, signal.SIGCONT)
        await asyncio.gather(*(asyncio.to_thread(r.stop) for r in regions.values()))
        if mesh.witness is not None:
            await asyncio.to_thread(mesh.witness.stop)
        for proxy in mesh.proxies():
            await proxy.stop()


def messages_of(region: RegionProcess) -> dict[str, list[tuple[int, str]]]:
    """Every conversation's messages as the region's store holds them: (seq, message_id)
    in seq order (read-only, beside the running process)."""
    db = sqlite3.connect(f"file:{region.data_dir / 'chatplane.db'}?mode=ro", uri=True)
    try:
        held: dict[str, list[tuple[int, str]]] = {}
        for conversation, seq, message_id in db.execute(
                "SELECT conversation_id, seq, message_id FROM messages"
                " ORDER BY conversation_id, seq"):
            held.setdefault(str(conversation), []).append((int(seq), str(message_id)))
        return held
    finally:
        db.close()


def inboxes_of(region: RegionProcess, users: list[str]) -> dict[str, list[tuple[int, str, int]]]:
    """Each user's inbox as the region's store holds it: (inbox_seq, conversation, seq)
    in inbox_seq order."""
    db = sqlite3.connect(f"file:{region.data_dir / 'chatplane.db'}?mode=ro", uri=True)
    try:
        return {user: [(int(n), str(c), int(s)) for n, c, s in db.execute(
            "SELECT inbox_seq, conversation_id, seq FROM inbox WHERE user_id = ?"
            " ORDER BY inbox_seq", (user,))] for user in users}
    finally:
        db.close()


def caught_up(mesh: Mesh) -> bool:
    """Every region has applied every other region's log to its head."""
    for region in mesh.regions.values():
        for peer, report in region.peers().items():
            replication = report.get("replication") or {}
            if peer in mesh.regions and (not replication.get("connected")
                                         or replication.get("lag") != 0):
                return False
    return True


def report(mesh: Mesh, lines: int = 30) -> str:
    """What each region logged (its last warnings and errors) and how its replication of
    each peer stands: printed when a test fails."""
    out = []
    for name, region in mesh.regions.items():
        out.append(f"== {name}")
        with contextlib.suppress(Exception):
            for peer, state in region.peers().items():
                out.append(f"  {peer}: {state.get('replication')}")
        noisy = [x for x in region.output if "WARNING" in x or "ERROR" in x]
        out.extend(f"  | {x}" for x in noisy[-lines:])
    return "\n".join(out)
