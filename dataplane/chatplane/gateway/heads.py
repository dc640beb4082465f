"""The gateway's head check: the backstop that makes a lost push harmless.

Pushes travel im -> state -> gateway, at least once while the outbox can
reach a state instance. A push can still be lost: the im that stored a
message is killed before handing it to state, Redis lost the routes, or a
gateway push timed out. When no later message follows, the device would
never learn of it. So every `interval_s` the gateway asks im for the inbox
heads of the users connected here, and remembers them; a connection that,
one round later, has still not acked the head seen then is sent
`SyncHint{inbox_head}` and pulls what it misses (again every round until it
acks: a sync can fail too). Waiting a round keeps entries that are merely
in flight from causing syncs.

Large groups (read diffusion) have no inbox entries, so the same round also
reads the heads of the large groups the connected devices were told of
(`Connection.groups`: from pushes and from their syncs' `GroupDelta`s), and
a device that was not told of a group's head seen a round earlier gets the
same `SyncHint`: its sync's `GroupDelta` brings what it missed.

Each round costs one inbox-head read per connected user, so the periodic
round is slow (`head_check_s`, 30 s by default). What can lose a push also
triggers two quick rounds one second apart (`check_soon()`): a request that
had to fail over to another im (the dead one may have stored messages it
never delivered), and Redis losing the routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from chatplane.supervision import Supervisor
from chatplane.v1 import frames_pb2 as pb

if TYPE_CHECKING:
    from chatplane.gateway.connection import Connection
    from chatplane.gateway.service import Gateway

HeadSource = Callable[[Sequence[str]], Awaitable[dict[str, int]]]
log = logging.getLogger("chatplane.gateway.heads")
BATCH = 500
QUICK_S = 1.0


class HeadChecker:
    def __init__(self, gateway: Gateway, heads: HeadSource, interval_s: float,
                 group_heads: HeadSource) -> None:
        self.gateway = gateway
        self.heads = heads
        self.group_heads = group_heads
        self.interval_s = interval_s
        self.hints = 0
        self.group_hints = 0  # of `hints`, those for a large group
        self.rounds = 0
        self._seen: dict[tuple[str, str], int] = {}  # (user, conn_id) -> head a round ago
        self._group_seen: dict[str, int] = {}  # large group -> its head a round ago
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._quick = 0  # quick rounds still to run

    def start(self, supervisor: Supervisor) -> None:
        self._task = supervisor.spawn("gateway-head-check", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def check_soon(self) -> None:
        """Two rounds a second apart, starting now."""
        self._quick = 2
        self._wake.set()

    async def _run(self) -> None:
        while True:
            wait = QUICK_S if self._quick else (self.interval_s if self.interval_s > 0 else None)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass
            self._wake.clear()
            self._quick = max(0, self._quick - 1)
            try:
                await self.round()
            except Exception as exc:  # im down: try again next round
                log.warning("head check failed: %s", exc)

    async def round(self) -> None:
        hinted = await self._inbox_round()
        await self._group_round(hinted)
        self.rounds += 1

    def _hint(self, conn: Connection, inbox_head: int) -> None:
        conn.session.send(pb.Frame(sync_hint=pb.SyncHint(inbox_head=inbox_head)))
        conn.flush()
        self.hints += 1

    async def _inbox_round(self) -> set[Connection]:
        users = list(self.gateway.users)
        heads: dict[str, int] = {}
        for start in range(0, len(users), BATCH):
            heads.update(await self.heads(users[start:start + BATCH]))
        seen: dict[tuple[str, str], int] = {}
        hinted: set[Connection] = set()
        for user, devices in list(self.gateway.users.items()):
            head = heads.get(user)
            if head is None:
                continue
            for conn in list(devices.values()):
                window = conn.window
                if window is None or conn.session.closed:
                    continue
                key = (user, conn.conn_id)
                earlier = self._seen.get(key, 0)
                # Acked is what counts: a hint whose sync failed, or a push
                # unacked for a whole round, gets another hint next round.
                if window.acked < earlier:
                    window.pushed_head = max(window.pushed_head, earlier)
                    self._hint(conn, earlier)
                    hinted.add(conn)
                seen[key] = head
        self._seen = seen
        return hinted

    async def _group_round(self, hinted: set[Connection]) -> None:
        """Devices not told of a large group's head seen a round ago sync."""
        told = [c for c in self.gateway.connections if c.groups and c.window is not None]
        groups = list({g for c in told for g in c.groups or ()})
        heads: dict[str, int] = {}
        for start in range(0, len(groups), BATCH):
            heads.update(await self.group_heads(groups[start:start + BATCH]))
        for conn in told:
            if conn in hinted or conn.session.closed or conn.window is None:
                continue
            if any(head < self._group_seen.get(g, 0) for g, head in (conn.groups or {}).items()):
                self._hint(conn, conn.window.pushed_head)
                self.group_hints += 1
        self._group_seen = heads
