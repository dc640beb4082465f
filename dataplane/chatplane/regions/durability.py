"""Durability modes (docs/architecture.md, "Regions"): when the home region acks a send.

`sync` (the default): a message sequenced here as home is acked once at least one peer
region has durably applied this region's log past its entry (the peer's cursor moves in
the transaction that stores the entries, and the peer says so with `Region.Applied`), so
losing this region loses nothing acked. The wait is bounded: when no peer confirms within
`timeout_s` the send fails UNAVAILABLE, which the client retries with the same cid. The
message stays stored here and in the log, so it replicates later, and the resend is a
duplicate answered with the original seq once a peer confirms it. With no reachable peer,
sends of homed chats fail (retriably) until one returns.

`async`: acked on this region's local durability, as before; a region lost before a peer
read its log loses what it acked in that window (the lag of `/v1/peers`).

A peer declared lost (regions/failover.py: silent past the detection time) no longer
counts: when every peer is lost **and** the failover witness lets this region ack alone
(`may_ack_alone`: it holds its lease and the witness durably records it alone, so no
region can be granted a takeover of it meanwhile), `sync` falls back to local
durability (`degraded`), so a lone survivor keeps acking; what it acks then is in its
store only until a peer is back and applies it. Without that permission a send waits
for a confirmation as usual and is refused UNAVAILABLE after `timeout_s`.
In `async`, with failover on, a send is acked only while `may_ack_unconfirmed` (the
lease holds, or the peer answered recently enough that it cannot have taken this
region over): a region cut from its peer and the witness stops acking.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.metrics import Histogram
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.storage.base import ReplicatedLog, StorageUnavailable

SYNC, ASYNC = "sync", "async"
# waits of a sync ack: loopback is a few ms, a cross-continent link ~100 ms
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _never() -> bool:
    return False


def _always() -> bool:
    return True


@dataclass
class PeerConfirmation:
    """How far one peer said it applied this region's log."""

    applied_to: int = 0
    reports: int = 0
    last_at: float | None = None  # wall clock of the last report

    def view(self, now: float, head: int) -> dict[str, Any]:
        return {"confirmed_to": self.applied_to,
                "unconfirmed": max(0, head - self.applied_to),
                "confirmed_s_ago": None if self.last_at is None else round(now - self.last_at, 3),
                "confirmations": self.reports}


@dataclass
class Durability:
    """The home side of `sync`: per peer, the log position it applied (monotonic), and
    the sends waiting for any peer to pass their position."""

    mode: str
    timeout_s: float
    log: ReplicatedLog
    peers: dict[str, PeerConfirmation] = field(default_factory=dict)
    wait_seconds: Histogram = field(default_factory=lambda: Histogram(
        "chatplane_region_sync_wait_seconds",
        "sync durability: a send's wait for a peer region to apply it", WAIT_BUCKETS))
    unconfirmed: int = 0  # sends failed UNAVAILABLE: no peer confirmed in time
    head_seen: int = 0  # this region's newest log position known here
    # peers silent past the detection time (regions/failover.py): not waited for
    lost: set[str] = field(default_factory=set)
    degraded: int = 0  # sync sends acked on local durability: every peer was lost
    # whether acking alone is allowed now (the witness lease, regions/leases.py)
    may_ack_alone: Callable[[], bool] = field(default_factory=lambda: _never)
    # async: whether acking at all is allowed now (Failover.may_ack_unconfirmed)
    may_ack_unconfirmed: Callable[[], bool] = field(default_factory=lambda: _always)
    fenced: int = 0  # async sends refused: neither the lease nor the peer vouched
    # told of each confirmation taken here (a cluster's ims share them: im/confirmations.py)
    on_confirmed: Callable[[str, int], None] | None = None
    _waiters: list[tuple[int, int, asyncio.Future[None]]] = field(default_factory=list)
    _order: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def of(cls, mode: str, timeout_s: float, log: ReplicatedLog,
           peers: list[str]) -> Durability:
        return cls(mode, timeout_s, log, {name: PeerConfirmation() for name in peers})

    @property
    def confirmed_to(self) -> int:
        """The highest position some peer applied: every entry up to it is in two stores."""
        return max((p.applied_to for p in self.peers.values()), default=0)

    async def applied(self, peer: str, position: int, *, relay: bool = True) -> bool:
        """`peer` durably applied this region's log up to `position` (Region.Applied, or
        the cursor a Replicate stream opens from). Lower than known: ignored. Past this
        region's log head: refused (False), since no peer can have applied what was never
        written, and believing it would ack sends no other region holds. `relay`: a
        confirmation taken here, passed on to `on_confirmed` (False: one passed on by
        another process)."""
        state = self.peers.get(peer)
        if state is None:
            return True
        if position > self.head_seen and position > await self.log.log_head():
            return False
        state.reports += 1
        state.last_at = time.time()
        if position <= state.applied_to:
            return True
        state.applied_to = position
        if relay and self.on_confirmed is not None:
            self.on_confirmed(peer, position)
        waiters = self._waiters
        while waiters and waiters[0][0] <= position:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)
        return True

    @property
    def alone(self) -> bool:
        """Every peer is lost and the witness lets this region ack on its own store."""
        return bool(self.peers) and self.lost.issuperset(self.peers) and self.may_ack_alone()

    def lose(self, peer: str) -> None:
        """`peer` is lost: no longer waited for. With none left and acking alone
        allowed, the sends waiting now are acked on local durability."""
        self.lost.add(peer)
        self.release_alone()

    def release_alone(self) -> None:
        """Acking alone is allowed (now): the waiting sends are acked."""
        if not self._waiters or not self.alone:
            return
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                self.degraded += 1
                future.set_result(None)

    @property
    def waits(self) -> bool:
        """Whether sends of homed chats wait for a peer (sync, with peers)."""
        return self.mode == SYNC and bool(self.peers)

    def waiter(self, position: int) -> asyncio.Future[None]:
        """A future done once a peer applied this region's log up to `position` (> 0),
        or every peer is lost: unbounded, unlike `settle` (a send refused for want of
        confirmation is still pushed to this region's devices once it is confirmed).
        Registered now, so it is done before any wait registered after it for the
        same position (a push goes out before the sender's ack)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if position <= self.confirmed_to or self.alone:
            future.set_result(None)
        else:
            heapq.heappush(self._waiters, (position, next(self._order), future))
        return future

    def note_head(self, head: int) -> None:
        """This region's log head, as a Replicate stream last read it (for the view)."""
        self.head_seen = max(self.head_seen, head)

    async def settle(self, conversation_id: str, position: int) -> None:
        """In `sync`, return once a peer applied this region's log up to `position`
        (the append's own: `AppendResult.log_position`, at or past its entry; 0, not
        known: the head is read); UNAVAILABLE after `timeout_s`."""
        if not self.peers:
            return
        if self.mode != SYNC:
            if not self.may_ack_unconfirmed():
                self.fenced += 1
                raise ProtocolError(
                    ErrorCode.UNAVAILABLE,
                    f"{conversation_id!r}: this region reaches neither its peers nor the"
                    " failover witness (async durability): not acked here, resend")
            return
        if self.alone:  # a lone survivor the witness vouches for: local durability
            self.degraded += 1
            return
        started = time.monotonic()
        if position <= 0:
            try:
                position = await self.log.log_head()
            except StorageUnavailable as exc:
                raise ProtocolError(ErrorCode.UNAVAILABLE,
                                    f"storage unavailable, retry: {exc}") from exc
        self.head_seen = max(self.head_seen, position)
        if position > self.confirmed_to:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (position, next(self._order), future))
            try:
                await asyncio.wait_for(future, self.timeout_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                self._waiters = [w for w in self._waiters if w[2] is not future]
                heapq.heapify(self._waiters)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                self.unconfirmed += 1
                raise ProtocolError(
                    ErrorCode.UNAVAILABLE,
                    f"no other region confirmed the message of {conversation_id!r} within"
                    f" {self.timeout_s:g}s (sync durability); it is stored here, resend it"
                ) from None
        self.wait_seconds.observe(time.monotonic() - started)

    # -- what an SRE sees ------------------------------------------------------

    def report(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        return {name: {"durability": self.mode, "lost": name in self.lost,
                       **state.view(now, self.head_seen)}
                for name, state in self.peers.items()}

    def families(self) -> Iterator[Metric]:
        yield self.wait_seconds.family()
        yield metrics.counter("chatplane_region_sync_unconfirmed_total",
                              "sends failed UNAVAILABLE in sync durability: no peer region"
                              " applied them in time (retried by the client)", self.unconfirmed)
        yield metrics.counter("chatplane_region_sync_degraded_total",
                              "sync sends acked on local durability: every peer region was"
                              " lost and the failover witness let this region ack alone",
                              self.degraded)
        yield metrics.counter("chatplane_region_async_fenced_total",
                              "async sends refused: neither the witness lease nor a recent"
                              " answer of the peer vouched that no takeover of this region"
                              " could be granted", self.fenced)
        yield metrics.labelled("gauge", "chatplane_region_confirmed_position",
                               "this region's log position the peer said it applied", "peer",
                               {name: s.applied_to for name, s in self.peers.items()})
