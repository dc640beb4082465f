"""Trimming this region's replicated log (docs/architecture.md, "Regions"): an entry
every peer has durably applied is never read again, so it is deleted.

Each peer says how far it applied this region's log (`Region.Applied`, and the cursor
a `Region.Replicate` stream opens from: regions/durability.py keeps the highest per
peer). The floor is the lowest of them over every configured peer; a peer that has not
reported since this process started counts as 0, so an unknown, stopped or lagging peer
holds the trim back and nothing it still needs is deleted. No snapshot resync is built,
so nothing else bounds the log: it grows for as long as a peer does not confirm, and
that growth is what `/v1/peers` ("log") and `chatplane_region_log_*` show.

A reader asking for positions already trimmed (a peer whose store was lost or replaced,
a peer added after the trim) is refused, never served a log with a hole
(`storage.base.LogTrimmed`, FAILED_PRECONDITION on the link, docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.regions.durability import Durability
from chatplane.storage.base import LogExtent, ReplicatedLog, StorageError

log = logging.getLogger("chatplane.regions")

TRIM_EVERY_S = 1.0  # how often the floor is looked at
TRIM_BATCH = 10_000  # log positions deleted per transaction (the writer serves sends between)
NOT_A_PEER = "(not a configured peer)"  # where refused reads of other callers are counted


@dataclass
class Trimming:
    """The background trim of this region's log, and what it reports."""

    log: ReplicatedLog
    durability: Durability
    extent: LogExtent = field(default_factory=lambda: LogExtent(0, 0))  # as last read
    trimmed: int = 0  # positions deleted since start
    refused: dict[str, int] = field(default_factory=dict)  # reads of trimmed positions
    error: str = ""

    def floor(self) -> int:
        """The highest position every peer applied (0 with no peer: nothing is trimmed,
        since nothing says the entries are anywhere else)."""
        return min((p.applied_to for p in self.durability.peers.values()), default=0)

    def held_by(self) -> list[str]:
        """The peers holding the trim back: those at the floor, while the log goes on."""
        floor = self.floor()
        if floor >= self.current().head:
            return []
        return sorted(name for name, p in self.durability.peers.items() if p.applied_to == floor)

    def refuse(self, region: str) -> None:
        """A reader asked for positions already trimmed (counted per configured peer;
        any other name a caller gives goes under one key, so callers cannot grow it)."""
        if region not in self.durability.peers:
            region = NOT_A_PEER
        if region not in self.refused:
            log.error("region %s asked for log positions trimmed here (up to %d): it must"
                      " resync from a snapshot", region, self.extent.trimmed_to)
        self.refused[region] = self.refused.get(region, 0) + 1

    async def trim_once(self) -> None:
        """Delete up to the floor, in batches of TRIM_BATCH positions."""
        extent = await self.log.log_extent()
        self.extent = extent
        floor = self.floor()
        while floor > extent.trimmed_to:
            before = extent.trimmed_to
            extent = await self.log.trim_log(floor, TRIM_BATCH)
            self.extent = extent
            if extent.trimmed_to <= before:
                return  # the floor is past the head read here (cannot be: applied() refuses it)
            self.trimmed += extent.trimmed_to - before
            await asyncio.sleep(0)  # let other work reach the writer between batches

    async def run(self) -> None:
        while True:
            try:
                await self.trim_once()
                self.error = ""
            except StorageError as exc:  # the store is down: try again later
                if not self.error:
                    log.warning("trimming the region log failed: %s", exc)
                self.error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(TRIM_EVERY_S)

    # -- what an SRE sees ------------------------------------------------------

    def current(self) -> LogExtent:
        """The extent as of the last trim pass (at most TRIM_EVERY_S old), with the
        newest head a send or a peer's read saw since."""
        extent = self.extent
        return LogExtent(extent.trimmed_to, max(extent.head, self.durability.head_seen))

    def report(self) -> dict[str, Any]:
        extent = self.current()
        return {"head": extent.head, "trimmed_to": extent.trimmed_to,
                "entries": extent.retained,
                "oldest_retained": extent.trimmed_to + 1 if extent.retained else None,
                "trim_floor": self.floor(), "held_back_by": self.held_by(),
                "trimmed_since_start": self.trimmed, "refused_reads": dict(self.refused),
                "error": self.error}

    def families(self) -> Iterator[Metric]:
        extent = self.current()
        yield metrics.gauge("chatplane_region_log_entries",
                            "entries this region's replicated log retains (not yet applied by"
                            " every peer)", extent.retained)
        yield metrics.gauge("chatplane_region_log_head_position",
                            "the newest position of this region's replicated log", extent.head)
        yield metrics.gauge("chatplane_region_log_trimmed_position",
                            "positions of this region's log at or below it are trimmed (the"
                            " oldest retained is the next)", extent.trimmed_to)
        yield metrics.counter("chatplane_region_log_trimmed_entries_total",
                              "log entries deleted because every peer applied them",
                              self.trimmed)
        yield metrics.labelled("counter", "chatplane_region_log_reads_refused_total",
                               "reads of this region's log from a trimmed position (the peer"
                               " must resync from a snapshot)", "peer", dict(self.refused))
