"""Fencing a lost region's log before a takeover, with three regions or more
(docs/architecture.md, "Failover").

With one peer, the region that takes a lost one over holds every message the lost
region acked in `sync`: it was the only region that could confirm it. With more, a
`sync` ack needed any one survivor, so what the lost region acked is spread over the
survivors. Before it asks the witness, the region that would take over (the asker)
fences every other live region with `Region.Fence(lost)`:

- the callee agrees only when it too has not heard `lost` for the detection time (a
  region some survivor still reaches is not taken over: a partition, not a loss);
- it stops applying `lost`'s log for `FENCE_HOLD_S` (an apply in flight finishes
  first), so it confirms nothing more of `lost`'s: `lost`, were it alive, could ack
  nothing more through it;
- it answers the head of every home of `lost` in its store (`home_heads`).

The asker fences itself the same way, then takes over only if it holds at least as
much of every home as every callee: the survivor holding the most takes over (on a tie,
whichever the witness grants first; a callee that holds more takes over when it asks).
In its takeover transaction it logs again what any callee lacks (per home, the least
head over the callees: `ReplicatedLog.take_over_homes(behind=...)`), so a callee reads
it from the taker's log before the first seq the taker gives. It then tells each callee
(`grant`): the callee rewrites `lost`'s rows to the taker (epoch + 1, the rewrite the
taker made) and lifts its fence; `lost`'s entries of those homes are then stale there
(regions/replication.py skips them and tells `lost` the new home). A takeover not made
within `FENCE_HOLD_S / 2` of the fence is given up and the fences lifted; a fence that
is neither lifted nor told lapses after `FENCE_HOLD_S`.

Pure decisions (`furthest`, `least_heads`) are functions of the heads; the rest is the
two sides of the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from chatplane.regions.homes import Homes
from chatplane.storage.base import ReplicatedLog
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")

FENCE_HOLD_S = 30.0  # a callee applies nothing of the lost region's log for this long
FENCE_TIMEOUT_S = 5.0  # one Region.Fence call

Heads = dict[tuple[str, str], int]  # (kind, key) -> newest seq or inbox_seq


def furthest(mine: Mapping[tuple[str, str], int],
             theirs: Mapping[str, Mapping[tuple[str, str], int]]) -> str:
    """"" when `mine` holds at least as much of every home as every other region's
    heads, else the first region found holding more (and of what)."""
    for region, heads in theirs.items():
        for key, head in heads.items():
            if head > mine.get(key, 0):
                return f"{region} holds {key[0]} {key[1]} to {head}, this region to {mine.get(key, 0)}"
    return ""


def least_heads(theirs: Sequence[Mapping[tuple[str, str], int]],
                keys: Sequence[tuple[str, str]]) -> Heads:
    """Per home, the least any of the regions holds (0 where one holds nothing)."""
    return {key: min((heads.get(key, 0) for heads in theirs), default=0) for key in keys}


def _nothing_applied(peer: str) -> int:
    return 0


def _heads(reply: rpb.FenceReply) -> Heads:
    return {(h.kind, h.key): int(h.head) for h in reply.heads}


@dataclass
class Gathered:
    """A fence round that may lead to a takeover: every callee fenced, this region
    holding the most; `behind` is what to log again for the callees."""

    others: list[str]
    behind: Heads
    started: float  # monotonic, before the first fence

    def late(self, now: float) -> bool:
        return now >= self.started + FENCE_HOLD_S / 2


@dataclass
class Fences:
    """Both sides of `Region.Fence`: the fences this region holds on peers' logs (read
    by regions/replication.py before each applied batch), and the asker's round."""

    homes: Homes
    log: ReplicatedLog
    silent_for: Callable[[str], float]  # peer -> seconds since it was last heard
    after_s: float  # the detection time
    # peer -> its log position applied here (set by Replication)
    applied_to: Callable[[str], int] = field(default_factory=lambda: _nothing_applied)
    taken_elsewhere: dict[str, str] = field(default_factory=dict)  # lost -> its taker
    fenced: int = 0  # fences granted to askers
    # fenced peer -> the region holding the fence (an asker, or this one) -> its end
    _until: dict[str, dict[str, float]] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _told: dict[str, int] = field(default_factory=dict)  # lost -> the grant told here

    def holds(self, peer: str) -> bool:
        """Whether `peer`'s log must not be applied now (some fence on it holds)."""
        holders = self._until.get(peer)
        if not holders:
            return False
        now = time.monotonic()
        for holder, until in list(holders.items()):
            if now >= until:
                del holders[holder]
                log.warning("the fence %s held on region %s's log lapsed: no takeover was"
                            " told", holder, peer)
        return bool(holders)

    def lock(self, peer: str) -> asyncio.Lock:
        """Held around each applied batch of `peer`'s log: a fence waits for it."""
        return self._locks.setdefault(peer, asyncio.Lock())

    async def hold(self, peer: str, holder: str) -> int:
        """Fence `peer`'s log here for `holder`; returns the cursor once no batch is
        in flight."""
        self._until.setdefault(peer, {})[holder] = time.monotonic() + FENCE_HOLD_S
        async with self.lock(peer):
            return self.applied_to(peer)

    def release(self, peer: str, holder: str | None = None) -> None:
        """Lift `holder`'s fence on `peer` (None: every fence on it)."""
        if holder is None:
            self._until.pop(peer, None)
        else:
            self._until.get(peer, {}).pop(holder, None)

    # -- the callee's side (Region.Fence) ----------------------------------------

    async def serve(self, request: rpb.FenceRequest) -> rpb.FenceReply:
        lost, asker = request.lost, request.region
        if lost == self.homes.region or lost not in self.homes.peers:
            return rpb.FenceReply(reason=f"{lost!r} is not a peer of {self.homes.region}")
        if request.lift:
            self.release(lost, asker)
            return rpb.FenceReply()
        if request.grant:
            await self.taken(lost, asker, int(request.grant))
            return rpb.FenceReply(taken_by=asker)
        taker = self.taken_elsewhere.get(lost) or (
            self.homes.region if lost in self.homes.lost else "")
        if taker:
            return rpb.FenceReply(taken_by=taker, reason=f"{lost} was taken over by {taker}")
        silent = self.silent_for(lost)
        if silent < self.after_s:
            return rpb.FenceReply(reason=f"region {self.homes.region} still hears {lost}")
        cursor = await self.hold(lost, asker)
        self.fenced += 1
        heads = await self.log.home_heads(lost)
        log.warning("region %s is taking over %s: its log is fenced here for %.0fs (applied"
                    " to %d, %d homes)", asker, lost, FENCE_HOLD_S, cursor, len(heads))
        return rpb.FenceReply(fenced=True, applied_to=cursor, heads=[
            rpb.HomeHead(kind=kind, key=key, head=head) for kind, key, head in heads])

    async def taken(self, lost: str, taker: str, grant: int) -> None:
        """`taker` took `lost` over under `grant`: its rows are rewritten here the way
        the taker rewrote them (once per grant), and the fence lifted."""
        if self._told.get(lost) != grant:
            moved = await self.log.take_over_homes(lost, taker)
            self._told[lost] = grant
            self.homes.forget_cached()
            log.warning("region %s took over %s (grant %d): %d homes now there", taker, lost,
                        grant, moved)
        self.taken_elsewhere[lost] = taker
        self.homes.lost.add(lost)  # not asked before this region places or checks a home
        if self.homes.durability is not None:
            self.homes.durability.lose(lost)
        self.release(lost)

    def returned(self, peer: str) -> None:
        """`peer` answers again: a takeover of it by another region is over for us."""
        self.taken_elsewhere.pop(peer, None)

    # -- the asker's side ------------------------------------------------------

    async def gather(self, lost: str, others: list[str]) -> Gathered | str:
        """Fence `lost`'s log here and in every other region; a Gathered when this
        region holds the most of every home, else why not (every fence then lifted)."""
        started = time.monotonic()
        await self.hold(lost, self.homes.region)
        replies = await asyncio.gather(*(self._call(peer, rpb.FenceRequest(
            region=self.homes.region, lost=lost)) for peer in others), return_exceptions=True)
        why = ""
        theirs: dict[str, Heads] = {}
        for peer, reply in zip(others, replies, strict=True):
            if isinstance(reply, BaseException):
                why = why or f"region {peer} was not fenced: {reply}"
            elif not reply.fenced:
                why = why or f"region {peer} refused the fence: {reply.reason}"
            else:
                theirs[peer] = _heads(reply)
        if not why:
            mine = {(kind, key): head for kind, key, head in await self.log.home_heads(lost)}
            ahead = furthest(mine, theirs)
            why = f"not the furthest survivor: {ahead}" if ahead else ""
            if not why:
                return Gathered(others, least_heads(list(theirs.values()), list(mine)), started)
        await self.lift(lost, list(theirs))
        return why

    async def lift(self, lost: str, others: list[str]) -> None:
        self.release(lost, self.homes.region)
        await asyncio.gather(*(self._call(peer, rpb.FenceRequest(
            region=self.homes.region, lost=lost, lift=True)) for peer in others),
            return_exceptions=True)

    async def tell(self, lost: str, others: list[str], grant: int) -> list[str]:
        """Each region told of the takeover; returns those that did not answer."""
        replies = await asyncio.gather(*(self._call(peer, rpb.FenceRequest(
            region=self.homes.region, lost=lost, grant=grant)) for peer in others),
            return_exceptions=True)
        return [peer for peer, reply in zip(others, replies, strict=True)
                if isinstance(reply, BaseException)]

    async def _call(self, peer: str, request: rpb.FenceRequest) -> rpb.FenceReply:
        stub = rgrpc.RegionStub(self.homes.channels(peer))
        try:
            reply: rpb.FenceReply = await stub.Fence(request, timeout=FENCE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
        return reply
