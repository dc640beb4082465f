"""This region's side of the failover witness (docs/architecture.md, "Failover"): the
lease it renews on itself, whether it may ack alone, and its takeover requests.

The lease is measured from when the renewal was **sent** (the witness starts it on
receipt, later), shortened by `DRIFT` for clocks that run at different rates, so this
region believes it holds its lease only while the witness does too: by the time the
witness sees it expired (and may grant a takeover of this region), this region stopped
acking alone. `Lease` is the state and its rules (no I/O); `WitnessLink` renews it over
gRPC every `renew_s` and asks for takeovers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.regions.witnessing import Wish
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from chatplane.v1 import witness_pb2 as wpb
from chatplane.v1 import witness_pb2_grpc as wgrpc

log = logging.getLogger("chatplane.regions")

DRIFT = 0.05  # clock-rate safety: a lease counts as 95 % of its TTL, from the send


@dataclass
class Lease:
    """What the witness last said of this region (monotonic seconds)."""

    ttl_s: float
    valid_until: float = 0.0  # 0: never held
    alone: bool = False  # the witness recorded that this region may ack alone
    taken_by: str = ""  # refused: this region was taken over by that one
    taken_grant: int | None = None  # the last takeover of this region the witness named
    renewals: int = 0
    refusals: int = 0
    failures: int = 0
    error: str = ""
    last_answer_at: float | None = None  # wall clock

    def held(self, now: float) -> bool:
        return not self.taken_by and now < self.valid_until

    def may_ack_alone(self, now: float) -> bool:
        """Acking on this region's store alone: only while the witness records it alone
        and the lease holds (so no takeover of this region can be granted meanwhile)."""
        return self.alone and self.held(now)

    def answered(self, reply: wpb.LeaseReply, sent_at: float) -> bool:
        """A renewal's answer; True when the homes cached here may be stale: this
        region was taken over (now, or since the last answer)."""
        self.last_answer_at = time.time()
        self.error = ""
        stale = self.taken_grant is not None and reply.taken_grant != self.taken_grant
        if reply.held:
            self.renewals += 1
            self.valid_until = sent_at + self.ttl_s * (1 - DRIFT)
            self.alone, self.taken_by = reply.alone, ""
        else:
            self.refusals += 1
            self.valid_until, self.alone = 0.0, False
            if reply.taken_by and not self.taken_by:
                log.error("region taken over by %s (witness grant %d): this region no longer"
                          " sequences the homes it held", reply.taken_by, reply.taken_grant)
                stale = True
            self.taken_by = reply.taken_by
            self.error = reply.reason
        self.taken_grant = reply.taken_grant
        return stale

    def failed(self, error: str) -> None:
        if error != self.error:
            log.warning("failover witness unreachable: %s", error)
        self.failures += 1
        self.error = error

    def view(self, now: float) -> dict[str, Any]:
        return {"held": self.held(now),
                "expires_in_s": round(max(0.0, self.valid_until - now), 3) if self.held(now)
                else 0.0,
                "ttl_s": self.ttl_s, "alone": self.alone, "taken_by": self.taken_by,
                # the grant that last took this region over (0: never), also once lifted
                "taken_grant": self.taken_grant or 0,
                "renewals": self.renewals, "refusals": self.refusals, "failures": self.failures,
                "error": self.error,
                "answered_s_ago": (None if self.last_answer_at is None
                                   else round(time.time() - self.last_answer_at, 3))}


@dataclass
class TakeoverAsk:
    """The last takeover request's outcome (for /v1/peers)."""

    peer: str
    granted: bool
    grant: int
    reason: str
    at: float  # wall clock

    def view(self, now: float) -> dict[str, Any]:
        return {"peer": self.peer, "granted": self.granted, "grant": self.grant,
                "reason": self.reason, "s_ago": round(now - self.at, 3)}


@dataclass
class WitnessLink:
    """Renews the lease and asks for takeovers (`endpoint`: host:port)."""

    region: str
    endpoint: str
    lease: Lease
    timeout_s: float
    security: LinkSecurity
    wish: Wish = Wish.KEEP
    last_grant: TakeoverAsk | None = None
    last_refusal: TakeoverAsk | None = None
    refused: int = 0
    _peers: Peers | None = field(default=None, repr=False)

    def _stub(self) -> wgrpc.WitnessStub:
        if self._peers is None:
            self._peers = Peers(self.timeout_s, self.security.for_peer_regions(self.region))
        return wgrpc.WitnessStub(self._peers.channel(self.endpoint, "witness"))

    async def renew(self) -> bool:
        """One renewal (with the current alone wish); True when cached homes may be stale."""
        sent_at = time.monotonic()
        if self.wish is Wish.CLEAR:  # no ack alone from now on, whatever the answer
            self.lease.alone = False
        try:
            reply = await self._stub().Lease(wpb.LeaseRequest(
                region=self.region, ttl_ms=int(self.lease.ttl_s * 1000),
                alone=wpb.AloneWish.Name(int(self.wish))),
                timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.lease.failed(f"{exc.code().name}: {exc.details()}")
            return False
        return self.lease.answered(reply, sent_at)

    async def take_over(self, peer: str) -> int:
        """The grant's number, or 0 when the witness refused (or did not answer)."""
        try:
            reply = await self._stub().Takeover(wpb.TakeoverRequest(region=self.region,
                                                                    lost=peer),
                                                timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            reply = wpb.TakeoverReply(granted=False,
                                      reason=f"witness unreachable: {exc.code().name}")
        ask = TakeoverAsk(peer, reply.granted, reply.grant, reply.reason, time.time())
        if reply.granted:
            self.last_grant = ask
            self.lease.alone = True  # recorded by the witness with the grant
            return int(reply.grant)
        if self.last_refusal is None or self.last_refusal.reason != ask.reason:
            log.warning("witness refused the takeover of %s: %s", peer, reply.reason)
        self.last_refusal = ask
        self.refused += 1
        return 0

    async def close(self) -> None:
        if self._peers is not None:
            await self._peers.close()

    def view(self) -> dict[str, Any]:
        now = time.time()
        return {"endpoint": self.endpoint, **self.lease.view(time.monotonic()),
                "wish": self.wish.name.lower(),
                "last_grant": None if self.last_grant is None else self.last_grant.view(now),
                "last_refusal": (None if self.last_refusal is None
                                 else self.last_refusal.view(now))}

    def families(self) -> Iterator[Metric]:
        now = time.monotonic()
        lease = self.lease
        yield metrics.gauge("chatplane_region_witness_lease_held",
                            "1 while this region holds its lease at the failover witness",
                            int(lease.held(now)))
        yield metrics.gauge("chatplane_region_witness_lease_expires_in_seconds",
                            "how long the held lease lasts without a renewal (0: not held)",
                            max(0.0, lease.valid_until - now) if lease.held(now) else 0.0)
        yield metrics.gauge("chatplane_region_witness_alone",
                            "1 while the witness records that this region may ack alone",
                            int(lease.alone))
        yield metrics.gauge("chatplane_region_witness_taken_over",
                            "1 while the witness refuses this region's lease: taken over",
                            int(bool(lease.taken_by)))
        yield metrics.counter("chatplane_region_witness_renewal_failures_total",
                              "lease renewals the witness did not answer", lease.failures)
        yield metrics.counter("chatplane_region_witness_takeovers_refused_total",
                              "takeovers of a lost peer the witness refused", self.refused)
