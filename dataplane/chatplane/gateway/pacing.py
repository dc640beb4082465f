"""How fast one user's sends reach storage: a token bucket per user (over all
its devices on this gateway) and a cap on the sends one connection has in
flight, with the rule that keeps a device's accepted sends in its order.

Where each limit holds (docs/operations.md, "Abuse limits"):
- `max_inflight_sends` is per connection, wherever it is served (it is told
  to the device in LoginAck, and the SDK never goes past it).
- the per-user rate is per gateway process: in `chatplane up` that is the
  whole server; in a cluster a user whose devices sit on k gateways may send
  up to k times the rate (devices of one user usually share a gateway only
  by chance; the cap is still per device connection times k, not unbounded).

A refused send is answered RATE_LIMITED or TOO_MANY_INFLIGHT (both
retriable): nothing was stored. A send im answered with a retriable error
(UNAVAILABLE...) counts as refused too (gateway/uplink.py). So that a refusal never lets a later send
overtake it, a connection that refused cid c refuses every send with a
higher cid (the same code, "after a refused send") until c comes again; the
SDK resends refused sends in cid order, so accepted sends keep the device's
order. A client that never resends the refused cid is let go after
BLOCK_LAPSE_MS (its own order is then its own business).
"""

from __future__ import annotations

from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.rates import UserRates

__all__ = ["BLOCK_LAPSE_MS", "SendGate", "UserRates"]

BLOCK_LAPSE_MS = 30_000.0


class SendGate:
    """One connection's sends: how many are in flight, and the lowest cid
    refused that has not come again (0: none)."""

    __slots__ = ("blocked_at_ms", "blocked_cid", "inflight", "max_inflight")

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.blocked_cid = 0
        self.blocked_at_ms = 0.0

    def admit(self, cid: int, user_id: str, rates: UserRates, now_ms: float) -> None:
        """Count the send in, or raise the refusal to answer it with."""
        refusal = self.after_refused(cid, now_ms)
        if refusal is not None:
            raise refusal
        if self.inflight >= self.max_inflight:
            self.block(cid, now_ms)
            raise ProtocolError(ErrorCode.TOO_MANY_INFLIGHT,
                                f"over {self.max_inflight} sends in flight; retry after an ack")
        if not rates.take(user_id, now_ms):
            self.block(cid, now_ms)
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"over {rates.rate_per_s:g} sends/s for this user; retry later")
        if cid == self.blocked_cid:
            self.blocked_cid = 0  # the refused send came again and is in
        self.inflight += 1

    def after_refused(self, cid: int, now_ms: float) -> ProtocolError | None:
        """The refusal of `cid` when a lower cid was refused and has not come
        again (checked at arrival, and again before a queued send goes to im:
        a send that failed meanwhile blocks the ones queued behind it)."""
        if self.blocked_cid and now_ms - self.blocked_at_ms > BLOCK_LAPSE_MS:
            self.blocked_cid = 0
        if self.blocked_cid and cid > self.blocked_cid:
            return ProtocolError(ErrorCode.RATE_LIMITED,
                                 f"after refused send cid {self.blocked_cid}; resend from it")
        return None

    def block(self, cid: int, now_ms: float) -> None:
        """`cid` was refused (here, or by im with a retriable error): refuse
        every higher cid until it comes again."""
        if not self.blocked_cid or cid <= self.blocked_cid:
            self.blocked_cid, self.blocked_at_ms = cid, now_ms

    def done(self) -> None:
        self.inflight -= 1
