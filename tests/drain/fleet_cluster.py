"""`drain.Fleet` over the gateways of a real `chatplane cluster up` deployment.

Each gateway is a `chatplane gateway` process; draining goes through its real
`POST /admin/drain`, connections are read from its real `GET /admin/drain`, and a
replacement is what `cluster up` does with a gateway that exits: the same member started
again (same ports), here recorded at the new version. The process does not know a version
(one build runs everywhere here), so the fleet keeps each member's version itself; that
bookkeeping is the only thing this adapter adds.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

from chatplane.cluster import Cluster
from chatplane_operator import drain


class ClusterFleet:
    def __init__(self, cluster: Cluster, version: str,
                 bad_versions: dict[str, dict[str, str]] | None = None) -> None:
        self.cluster = cluster
        self.admin = drain.GatewayAdmin()
        # the operator's calls carry the admin secret to the admin port (a gateway
        # trusts no address, loopback included)
        self.access = drain.AdminAccess(secret=cluster.admin_secret)
        self.names = cluster.names("gateway")
        self.versions = dict.fromkeys(self.names, version)
        self.started = dict.fromkeys(self.names, time.time())
        self.draining: dict[str, float] = {}
        # versions whose gateways get this environment (e.g. one that cannot start)
        self.bad_versions = bad_versions or {}
        self.connections_at_drain: dict[str, int] = {}

    async def expected(self) -> int:
        return len(self.names)

    async def gateways(self) -> list[drain.Gateway]:
        out = []
        for i, name in enumerate(self.names):
            m = self.cluster.members[name]
            count = await self.admin.connections(m.admin_url, self.access) if m.alive else None
            out.append(drain.Gateway(
                name=name, version=self.versions[name],
                ready=m.alive and m.ready.is_set() and name not in self.draining,
                connections=count or 0, draining_since=self.draining.get(name),
                started_at=self.started[name], ordinal=i))
        return out

    async def start_drain(self, name: str, rate: float, deadline_s: float) -> None:
        m = self.cluster.members[name]
        self.connections_at_drain[name] = await self.admin.connections(m.admin_url, self.access) or 0
        await self.admin.drain(m.admin_url, rate, deadline_s, self.access)
        self.draining[name] = time.time()

    async def replace(self, name: str, version: str) -> None:
        m = self.cluster.members[name]
        if m.proc is not None and m.alive:
            try:  # a drained gateway exits by itself, once empty
                await asyncio.to_thread(m.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.cluster.kill(name)
        self.draining.pop(name, None)
        m.env = dict(self.bad_versions.get(version, {}))
        self.versions[name] = version
        self.started[name] = time.time()
        self.cluster.start_member(name, wait_s=None)
