"""Token buckets keyed by user id: the per-user budgets of the gateway's
sends (gateway/pacing.py) and im's group invitations. No I/O; the caller
passes the clock."""

from __future__ import annotations

# Buckets of users idle this long are dropped (they are full again by then).
IDLE_DROP_MS = 60_000.0


class UserRates:
    """Token buckets keyed by user id: `rate_per_s` refill, `burst` depth."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, at_ms)
        self._swept_ms = 0.0
        self.refused = 0

    def take(self, user_id: str, now_ms: float, count: int = 1) -> bool:
        """Take `count` tokens, or none (False) when there are fewer."""
        tokens, at = self._buckets.get(user_id, (self.burst, now_ms))
        tokens = min(self.burst, tokens + max(0.0, now_ms - at) / 1000.0 * self.rate_per_s)
        if tokens < count:
            self._buckets[user_id] = (tokens, now_ms)
            self.refused += 1
            return False
        self._buckets[user_id] = (tokens - count, now_ms)
        if now_ms - self._swept_ms > IDLE_DROP_MS:
            self._sweep(now_ms)
        return True

    def _sweep(self, now_ms: float) -> None:
        self._swept_ms = now_ms
        for user, (_, at) in list(self._buckets.items()):
            if now_ms - at > IDLE_DROP_MS:
                del self._buckets[user]

    def __len__(self) -> int:
        return len(self._buckets)
