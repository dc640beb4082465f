"""Uplink, client side: the sends a device has not seen acked, by cid.

A send stays pending until the server acks it (or refuses it for good); it
goes out in cid order, at most `max_inflight` at once (LoginAck's bound), and
again with the same cid after a reconnect, so the server's dedup answers a
resend with the original ack. After a retriable refusal (UNAVAILABLE, rate)
nothing more goes out until `paused_until`: the server takes sends again from
the refused cid (gateway/pacing.py). Shared vectors: tests/vectors/sends.json
(the JS SDK's SendQueue passes the same).
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class Outcome(Enum):
    ACKED = "acked"  # done: the ack goes to the app
    REFUSED = "refused"  # done: a final error goes to the app
    RETRY = "retry"  # still pending: sent again after the pause
    STALE = "stale"  # not pending (an old reply): nothing to report


class SendQueue(Generic[T]):
    def __init__(self, max_inflight: int = 128) -> None:
        self.max_inflight = max_inflight
        self.pending: dict[int, T] = {}  # insertion order is cid order
        self.inflight: set[int] = set()  # sent on this connection, not answered
        self.paused_until: float | None = None

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, cid: int, body: T) -> None:
        self.pending[cid] = body

    def due(self, now: float) -> list[int]:
        """The cids to transmit now, in order (marked in flight)."""
        if self.paused_until is not None:
            if now < self.paused_until:
                return []
            self.paused_until = None
        out: list[int] = []
        for cid in self.pending:
            if len(self.inflight) >= self.max_inflight:
                break
            if cid not in self.inflight:
                self.inflight.add(cid)
                out.append(cid)
        return out

    def answered(self, cid: int, *, ok: bool, retriable: bool, now: float,
                 pause_s: float) -> Outcome:
        """The server's answer to a send of `cid` on the current connection."""
        self.inflight.discard(cid)
        if cid not in self.pending:
            return Outcome.STALE
        if ok or not retriable:
            del self.pending[cid]
            return Outcome.ACKED if ok else Outcome.REFUSED
        if self.paused_until is None:  # same cid, in order, a little later
            self.paused_until = now + pause_s
        return Outcome.RETRY

    def reconnected(self) -> None:
        """A new connection: everything pending goes again, same cids."""
        self.inflight.clear()
        self.paused_until = None
