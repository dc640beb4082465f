"""Failover (docs/architecture.md, "Failover"): a peer region that has not answered a
Hello for `after_s` is lost, and this region takes over the homes it held.

The takeover is one storage transaction (`ReplicatedLog.take_over_homes`): every
conversation homed in the lost region is homed here at its epoch + 1, confirmed, so a
store that meets both rows keeps ours (`storage.base.home_replaces`). This region then
sequences those chats from its own copy of their history: in `sync` durability every
message the lost region acked was applied here first (two regions: this is the only
other one), so the next seq it gives follows every acked one. What the lost region
sequenced and no peer applied was never acked; it stays in the lost region's store,
where the new home's messages at those seqs supersede it once it is back
(`apply_log`), and a peer never applies it (regions/replication.py skips a home's
entries under an epoch it no longer holds).

Sync acks stop waiting for a lost peer (regions/durability.py: alone, local
durability). A lost peer that answers again counts again: its sends wait for it,
and it catches up by replicating this region's log (never trimmed past what it
confirmed). When it returns, it checks each of its own homes with its peers before
sequencing under it (`Homes._verify`), and learns the higher epoch.

Automatic takeover runs with exactly one peer (two regions). With more, the region
that takes over would need every message acked by any survivor, and a `sync` ack
needs only one of them: choosing the survivor that holds the most is not built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.regions.durability import Durability
from chatplane.regions.homes import Homes
from chatplane.storage.base import ReplicatedLog

log = logging.getLogger("chatplane.regions")

CHECK_S = 0.25  # how often the peers' probe state is looked at


class Probed(Protocol):
    """What the prober knows of one peer (regions.links.PeerLink)."""

    @property
    def reachable(self) -> bool: ...

    @property
    def last_ok(self) -> float | None: ...


@dataclass
class Takeover:
    """One takeover of a lost peer's homes (wall-clock seconds)."""

    peer: str
    at: float
    silent_s: float  # how long the peer had not answered
    homes: int  # conversations taken over
    returned_at: float | None = None

    def view(self, now: float) -> dict[str, Any]:
        return {"peer": self.peer, "s_ago": round(now - self.at, 3),
                "silent_s": round(self.silent_s, 3), "homes": self.homes,
                "returned_s_ago": (None if self.returned_at is None
                                   else round(now - self.returned_at, 3))}


@dataclass
class Failover:
    """Watches the peers' Hellos; takes over the homes of a peer lost for `after_s`."""

    homes: Homes
    log: ReplicatedLog
    links: Mapping[str, Probed]
    after_s: float
    durability: Durability | None = None
    started: float = field(default_factory=time.time)
    takeovers: list[Takeover] = field(default_factory=list)
    homes_taken: int = 0

    @property
    def enabled(self) -> bool:
        return self.after_s > 0 and len(self.links) == 1

    async def run(self) -> None:
        if len(self.links) > 1 and self.after_s > 0:
            log.warning("automatic failover is off: it is built for two regions, %d peers"
                        " are listed (docs/architecture.md, Failover)", len(self.links))
        if not self.enabled:
            return
        while True:
            await self.check(time.time())
            await asyncio.sleep(CHECK_S)

    async def check(self, now: float) -> None:
        for name, link in self.links.items():
            if link.reachable:
                if name in self.homes.lost:
                    self._returned(name, now)
                continue
            # a peer never heard since start is silent since the start
            silent = now - max(link.last_ok or 0.0, self.started)
            if silent >= self.after_s and name not in self.homes.lost:
                await self._take_over(name, silent, now)

    async def _take_over(self, peer: str, silent: float, now: float) -> None:
        # a storage failure raises before anything changed here: the next check retries
        taken = await self.log.take_over_homes(peer, self.homes.region)
        self.homes.forget_cached()
        self.homes.lost.add(peer)
        if self.durability is not None:
            self.durability.lose(peer)
        self.homes_taken += taken
        self.takeovers.append(Takeover(peer, now, silent, taken))
        del self.takeovers[:-16]
        log.warning("region %s lost (no answer for %.1fs): took over its %d homes here",
                    peer, silent, taken)

    def _returned(self, peer: str, now: float) -> None:
        self.homes.lost.discard(peer)
        if self.durability is not None:
            self.durability.lost.discard(peer)
        for takeover in reversed(self.takeovers):
            if takeover.peer == peer and takeover.returned_at is None:
                takeover.returned_at = now
        log.warning("region %s answers again: it catches up from this region's log", peer)

    # -- what an SRE sees ------------------------------------------------------

    def report(self) -> dict[str, Any]:
        now = time.time()
        return {"failover": {"enabled": self.enabled, "after_s": self.after_s,
                             "lost": sorted(self.homes.lost),
                             "takeovers": [t.view(now) for t in self.takeovers]}}

    def families(self) -> Iterator[Metric]:
        yield metrics.labelled("gauge", "chatplane_region_peer_lost",
                               "1 while the peer region is lost and its homes are held here",
                               "peer", {name: int(name in self.homes.lost) for name in self.links})
        yield metrics.counter("chatplane_region_homes_taken_over_total",
                              "conversations whose home was taken over from a lost region",
                              self.homes_taken)
