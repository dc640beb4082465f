"""Uplink dedup, client side: client message ids (cids).

A device numbers its sends with strictly increasing cids and resends with the
same cid until acked; the server stores the cid with the message and answers a
resend with the original ack (storage.append is idempotent on sender, device
and cid). Starting from the clock in microseconds keeps cids increasing across
restarts of the app without persisting a counter.
"""

from __future__ import annotations

import time


class CidAllocator:
    def __init__(self, start: int | None = None) -> None:
        self._last = start if start is not None else time.time_ns() // 1000

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last
