"""The region jobs one im of a cluster runs (docs/cluster.md, "Regions"): following
each peer region's replicated log (the pullers), telling each peer how far its log is
applied here, and trimming this region's log (regions/replication.py, `start`).

Every im of the region serves the `Region` link (any of them answers a peer's
`Replicate`, `Send` or `OfferHome` from the shared store), but two pullers of one peer
would apply every batch twice and push it twice. So the jobs run on the owner of the
key "region:<name>" on the im ring, the ring the gateways route by (live ims in Redis,
im/forward.py), which takes the key's lease in storage first (`Storage.acquire`, the
same conditional write as a conversation's lease, im/leases.py): the `leases` table
names the im that runs them and how often they moved (the epoch). A killed im leaves
the ring once its registry entry expires (`registry_ttl_s`), and the next owner takes
the lease and starts them, each puller from the cursor the store holds for its peer.
An im that sees the ring give the key to another stops its jobs. The others read
each peer's cursor from the store instead (`follow_cursors`), so what asks how far a
peer's log is applied in this region (a friend change's read-back, regions/social.py;
`/v1/peers`) sees the pullers' progress on every im.

While two ims' rings disagree (a second at most, their registry caches) both may run
them: harmless, since a batch is applied in one transaction that moves the peer's
cursor and skips what the cursor passed or the store holds (by (conversation, seq) and
(user, inbox_seq)), and only the transaction that stores an entry pushes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from chatplane.im.leases import LeaseStore
from chatplane.regions.replication import PeerReplication
from chatplane.storage.base import ReplicatedLog, StorageError

log = logging.getLogger("chatplane.im")

CHECK_S = 0.5  # how often the ring is looked at (its registry view is cached 1 s)
CURSOR_S = 0.05  # how often an im without the jobs reads the peers' cursors


class Ring(Protocol):
    """Who owns a key on the im ring (im/forward.py, `ImRing`)."""

    instance_id: str

    async def owns(self, conversation_id: str) -> bool: ...

    def on_ring(self) -> bool: ...


def jobs_key(region: str) -> str:
    """The ring key, and lease, of a region's jobs."""
    return f"region:{region}"


class RegionJobs:
    def __init__(self, region: str, ring: Ring, leases: LeaseStore,
                 start: Callable[[], None], stop: Callable[[], Awaitable[None]],
                 check_s: float = CHECK_S) -> None:
        self.key = jobs_key(region)
        self.ring = ring
        self.leases = leases
        self._start = start
        self._stop = stop
        self.check_s = check_s
        self.running = False
        self.epoch = 0  # the lease epoch taken when they last started here
        self.taken = 0  # how often they started here

    async def _mine(self) -> bool:
        owns = await self.ring.owns(self.key)  # (refreshes the ring first)
        return owns and self.ring.on_ring()

    async def check(self) -> None:
        """Start the jobs here when the ring gives this im the key, stop them when not."""
        mine = await self._mine()
        if mine and not self.running:
            self.epoch = await self.leases.acquire(self.key, self.ring.instance_id)
            self._start()
            self.running = True
            self.taken += 1
            log.warning("%s: this im runs the region jobs now (lease epoch %d)",
                        self.ring.instance_id, self.epoch)
        elif not mine and self.running:
            await self.stop()
            log.warning("%s: the region jobs moved to another im", self.ring.instance_id)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except StorageError as exc:  # the lease not taken: the next round
                log.warning("region jobs: lease of %s not taken: %s", self.key, exc)
            await asyncio.sleep(self.check_s)

    async def follow_cursors(self, peers: dict[str, PeerReplication],
                             log_: ReplicatedLog) -> None:
        """While the jobs run elsewhere: each peer's applied position as the store
        holds it (the pullers' im moves it with every batch)."""
        while True:
            if not self.running:
                try:
                    for peer, state in peers.items():
                        state.applied_to = max(state.applied_to, await log_.log_cursor(peer))
                except StorageError as exc:
                    log.debug("cursors not read: %s", exc)
            await asyncio.sleep(CURSOR_S)

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self._stop()

    def report(self) -> dict[str, Any]:
        """For `/v1/peers`: whether this im runs the jobs."""
        return {"jobs": {"here": self.running, "lease": self.key, "epoch": self.epoch,
                         "taken": self.taken}}
