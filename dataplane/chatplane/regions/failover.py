"""Failover (docs/architecture.md, "Failover"): a peer region that has been silent for
`after_s` (its Hellos unanswered, none of its own heard) is lost; this region takes over
the homes it held only when the failover witness grants it (regions/leases.py,
regions/witnessing.py), and acks alone only while the witness lets it.

Regions alone cannot tell a partition from a loss, so without a witness
(`CHATPLANE_FAILOVER_WITNESS`) failover is off: homes wait for their region.

The takeover is one storage transaction (`ReplicatedLog.take_over_homes`): every
conversation homed in the lost region is homed here at its epoch + 1, confirmed, so a
store that meets both rows keeps ours (`storage.base.home_replaces`). This region then
sequences those chats from its own copy of their history: in `sync` durability every
message the lost region acked was applied by another region first (two regions: this
one; more: the fence round below) unless the lost region acked alone, and the witness
grants no takeover of a region it records alone, so the next seq given here follows
every acked one. What the
lost region sequenced and no peer applied was never acked; it stays in the lost region's
store, where the new home's messages at those seqs supersede it once it is back
(`apply_log`), and a peer never applies it (regions/replication.py skips a home's
entries under an epoch it no longer holds).

A lost peer is no longer waited for by sync acks; with every peer lost, they are acked
on local durability only while the witness records this region alone and its lease
holds (regions/durability.py), else refused UNAVAILABLE after the sync timeout. A lost
peer that answers again counts again; once it confirmed this region's log past
everything acked alone, this region clears its alone record, which also lifts the
regions it took over. A region told by the witness that it was taken over drops its
cached homes: it checks each with its peers before sequencing under it (`Homes._verify`).

With more than one peer a `sync` ack needed only one of them, so before asking the
witness this region fences every other region's copy of the lost region's log and
takes over only when it holds the most of every home (regions/fencing.py); its takeover
transaction first logs again what the others lack, and it tells them the takeover,
after which they count the lost region as lost too (`fences.taken_elsewhere`) and ask
nothing of it. A takeover needs every other region to answer: with one more lost or
cut off, nothing moves.
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
from chatplane.regions.fencing import Fences, Gathered
from chatplane.regions.homes import Homes
from chatplane.regions.leases import DRIFT, WitnessLink
from chatplane.regions.witnessing import Wish
from chatplane.storage.base import ReplicatedLog, StorageError

log = logging.getLogger("chatplane.regions")

CHECK_S = 0.25  # how often the peers' probe state is looked at
LEASE_SHARE = 0.5  # the lease's TTL, of the detection time: expired before a peer asks
RENEWALS_PER_TTL = 3  # a lease survives two lost renewals


def lease_ttl(after_s: float) -> float:
    """The witness lease of a region whose peers detect its loss after `after_s`."""
    return after_s * LEASE_SHARE


class Probed(Protocol):
    """What the prober knows of one peer (regions.links.PeerLink)."""

    @property
    def reachable(self) -> bool: ...

    @property
    def last_ok(self) -> float | None: ...

    @property
    def ok_sent_at(self) -> float | None: ...

    @property
    def heard_at(self) -> float | None: ...


@dataclass
class Takeover:
    """One takeover of a lost peer's homes (wall-clock seconds)."""

    peer: str
    at: float
    silent_s: float  # how long the peer had not answered
    homes: int  # conversations taken over
    grant: int  # the witness's grant
    returned_at: float | None = None

    def view(self, now: float) -> dict[str, Any]:
        return {"peer": self.peer, "s_ago": round(now - self.at, 3),
                "silent_s": round(self.silent_s, 3), "homes": self.homes, "grant": self.grant,
                "returned_s_ago": (None if self.returned_at is None
                                   else round(now - self.returned_at, 3))}


@dataclass
class Failover:
    """Watches the peers' Hellos; takes over the homes of a peer lost for `after_s`
    when the witness grants it; keeps this region's witness lease."""

    homes: Homes
    log: ReplicatedLog
    links: Mapping[str, Probed]
    after_s: float
    durability: Durability | None = None
    witness: WitnessLink | None = None
    started: float = field(default_factory=time.time)
    takeovers: list[Takeover] = field(default_factory=list)
    homes_taken: int = 0
    _clear_head: int | None = None  # this region's log head when it stopped acking alone
    _next_ask: float = 0.0
    # lost peer -> (the grant, the other regions not told of our takeover yet)
    _untold: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    last_not_taken: str = ""  # why the last fence round led to no takeover
    fences: Fences = field(init=False)

    def __post_init__(self) -> None:
        self.fences = Fences(self.homes, self.log, lambda peer: self.silent_for(
            self.links[peer], time.time()), self.after_s)

    @property
    def enabled(self) -> bool:
        return self.after_s > 0 and bool(self.links) and self.witness is not None

    def off_because(self) -> str:
        """Why failover is off ("" when on)."""
        if self.after_s <= 0:
            return "CHATPLANE_FAILOVER_AFTER_S is 0"
        if self.witness is None:
            return ("no failover witness (CHATPLANE_FAILOVER_WITNESS): regions alone"
                    " cannot tell a partition from a region's loss")
        return ""

    async def run(self) -> None:
        why = self.off_because()
        if why and self.links:
            log.warning("automatic failover is off: %s", why)
        if not self.enabled:
            return
        witness = self.witness
        assert witness is not None
        if self.durability is not None:
            self.durability.may_ack_alone = lambda: witness.lease.may_ack_alone(time.monotonic())
            self.durability.may_ack_unconfirmed = self.may_ack_unconfirmed
        try:
            await asyncio.gather(self._renew(witness), self._watch())
        finally:
            await witness.close()

    async def _renew(self, witness: WitnessLink) -> None:
        every = witness.lease.ttl_s / RENEWALS_PER_TTL
        while True:
            started = time.monotonic()
            try:
                if await witness.renew():
                    self.homes.forget_cached()  # taken over: check each home with the peers
                if self.durability is not None:
                    self.durability.release_alone()
            except Exception as exc:  # a dead loop would end the lease for good
                log.exception("witness renewal failed")
                witness.lease.failed(f"renewal failed: {exc!r}")
            await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))

    async def _watch(self) -> None:
        while True:
            try:
                await self.check(time.time())
            except StorageError as exc:  # retried at the next check
                log.warning("failover check failed: %s", exc)
            except Exception:  # a dead loop would stop failover silently
                log.exception("failover check failed")
            await asyncio.sleep(CHECK_S)

    def silent_for(self, link: Probed, now: float) -> float:
        """Since the peer last answered us or called us (never: since the start)."""
        return now - max(link.last_ok or 0.0, link.heard_at or 0.0, self.started)

    async def check(self, now: float) -> None:
        durability = self.durability
        for name, link in self.links.items():
            if link.reachable:
                if (name in self.homes.lost or (durability and name in durability.lost)
                        or name in self.fences.taken_elsewhere):
                    self._returned(name, now)
                continue
            silent = self.silent_for(link, now)
            if silent < self.after_s:
                continue
            if durability is not None and name not in durability.lost:
                log.warning("region %s silent for %.1fs: lost; acks here go on alone only"
                            " while the witness lets this region", name, silent)
                durability.lose(name)
            if (name not in self.homes.lost and name not in self.fences.taken_elsewhere
                    and time.monotonic() >= self._next_ask):
                assert self.witness is not None
                self._next_ask = time.monotonic() + self.witness.lease.ttl_s / RENEWALS_PER_TTL
                await self._try_take_over(name, silent, now)
        for name, (grant, untold) in list(self._untold.items()):
            if name in self.homes.lost:
                self._untold[name] = (grant, await self.fences.tell(name, untold, grant))
            if not self._untold[name][1] or name not in self.homes.lost:
                del self._untold[name]
        await self._wish()

    async def _try_take_over(self, lost: str, silent: float, now: float) -> None:
        """With other regions than `lost`, first fence them and check this region holds
        the most of `lost`'s homes (regions/fencing.py); then ask the witness."""
        assert self.witness is not None
        others = [name for name in self.links if name != lost]
        gathered = None
        if others:
            outcome = await self.fences.gather(lost, others)
            if isinstance(outcome, str):
                if outcome != self.last_not_taken:
                    log.warning("no takeover of %s from here: %s", lost, outcome)
                self.last_not_taken = outcome
                return
            gathered = outcome
        grant = await self.witness.take_over(lost)
        if gathered is not None and (not grant or gathered.late(time.monotonic())):
            await self.fences.lift(lost, others)  # asked again at a later check
            return
        if grant:
            await self._take_over(lost, silent, now, grant, gathered)

    async def _wish(self) -> None:
        """What the next renewal asks of the witness's alone record: set while every
        peer is lost; cleared once the peers confirmed this region's log past all it
        acked alone (its head when it stopped, read after it stopped)."""
        durability, witness = self.durability, self.witness
        if durability is None or witness is None or not durability.peers:
            return
        if durability.lost.issuperset(durability.peers):
            witness.wish, self._clear_head = Wish.SET, None
            return
        if not witness.lease.alone or durability.lost:
            witness.wish = Wish.KEEP
            if not witness.lease.alone:
                self._clear_head = None
            return
        if self._clear_head is None:
            self._clear_head = await self.log.log_head()
        confirmed = min(p.applied_to for p in durability.peers.values())
        witness.wish = Wish.CLEAR if confirmed >= self._clear_head else Wish.KEEP

    def may_ack_unconfirmed(self) -> bool:
        """async durability: acking without a peer's confirmation is safe while the
        lease holds, or while a peer answered a Hello sent less than `after_s` ago
        (shortened for clock rates): it cannot have declared this region lost."""
        if self.witness is not None and self.witness.lease.held(time.monotonic()):
            return True
        now = time.time()
        return any(link.ok_sent_at is not None
                   and now - link.ok_sent_at < self.after_s * (1 - DRIFT) - CHECK_S
                   for link in self.links.values())

    async def _take_over(self, peer: str, silent: float, now: float, grant: int,
                         gathered: Gathered | None = None) -> None:
        # a storage failure raises before anything changed here: the next check retries
        # (the witness answers the same grant again)
        taken = await self.log.take_over_homes(
            peer, self.homes.region, None if gathered is None else gathered.behind)
        self.homes.forget_cached()
        self.homes.lost.add(peer)
        if self.durability is not None:
            self.durability.lose(peer)
        self.fences.release(peer)  # its entries of these homes are stale here from now on
        if gathered is not None:
            untold = await self.fences.tell(peer, gathered.others, grant)
            if untold:
                self._untold[peer] = (grant, untold)
        self.homes_taken += taken
        self.takeovers.append(Takeover(peer, now, silent, taken, grant))
        del self.takeovers[:-16]
        log.warning("region %s lost (no answer for %.1fs): the witness granted the takeover"
                    " (grant %d); took over its %d homes here", peer, silent, grant, taken)

    def _returned(self, peer: str, now: float) -> None:
        self.homes.lost.discard(peer)
        self.fences.returned(peer)
        if self.durability is not None:
            self.durability.lost.discard(peer)
        for takeover in reversed(self.takeovers):
            if takeover.peer == peer and takeover.returned_at is None:
                takeover.returned_at = now
        log.warning("region %s answers again: it catches up from this region's log", peer)

    # -- what an SRE sees ------------------------------------------------------

    def report(self) -> dict[str, Any]:
        now = time.time()
        durability = self.durability
        return {"failover": {
            "enabled": self.enabled, "off_because": self.off_because(),
            "after_s": self.after_s, "lost": sorted(self.homes.lost),
            "silent": sorted(durability.lost) if durability is not None else [],
            "acking_alone": durability is not None and durability.alone,
            "witness": None if self.witness is None else self.witness.view(),
            "taken_by_others": dict(self.fences.taken_elsewhere),
            "fences_granted": self.fences.fenced, "last_not_taken": self.last_not_taken,
            "takeovers": [t.view(now) for t in self.takeovers]}}

    def families(self) -> Iterator[Metric]:
        yield metrics.labelled("gauge", "chatplane_region_peer_lost",
                               "1 while the peer region is lost and its homes were taken over"
                               " (here, or by another region that told this one)",
                               "peer", {name: int(name in self.homes.lost) for name in self.links})
        yield metrics.counter("chatplane_region_homes_taken_over_total",
                              "conversations whose home was taken over from a lost region",
                              self.homes_taken)
        if self.witness is not None:
            yield from self.witness.families()
