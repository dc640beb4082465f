"""A log-linear latency histogram: cheap to record, mergeable, ~3% precise.

Values are whole microseconds. Below 64 µs every value has its own bucket;
above, each power of two is cut into 32 buckets (so a percentile is off by at
most 1/32 of its value). Recording is two integer operations and a list
increment, so a bench can record every message at tens of thousands a second;
`to_dict`/`from_dict` carry a histogram across processes to be merged.
"""

from __future__ import annotations

from typing import Any

_EXACT = 64  # values below this get a bucket each
_SUB_BITS = 5  # 32 buckets per power of two above that
_SUB = 1 << _SUB_BITS
_BUCKETS = _EXACT + _SUB * 40  # covers up to 2**45 µs: more than a year


def bucket_of(us: int) -> int:
    """The bucket index of a value in microseconds (negative counts as 0)."""
    if us < _EXACT:
        return us if us > 0 else 0
    shift = us.bit_length() - (_SUB_BITS + 1)
    return (shift << _SUB_BITS) + (us >> shift)


def bucket_value(index: int) -> int:
    """A representative value (the middle) of a bucket, in microseconds."""
    if index < _EXACT:
        return index
    shift = (index >> _SUB_BITS) - 1
    mantissa = (index & (_SUB - 1)) | _SUB
    low = mantissa << shift
    return low + ((1 << shift) >> 1)


class LatencyHistogram:
    """Counts of latencies; `percentile(99)` answers in microseconds."""

    __slots__ = ("count", "counts", "max_us", "sum_us")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.sum_us = 0
        self.max_us = 0

    def record(self, us: int) -> None:
        idx = bucket_of(us)
        if idx >= _BUCKETS:
            idx = _BUCKETS - 1
        self.counts[idx] += 1
        self.count += 1
        self.sum_us += us
        if us > self.max_us:
            self.max_us = us

    def percentile(self, p: float) -> int:
        """The value at percentile `p` (0..100); 0 when empty."""
        if not self.count:
            return 0
        if p >= 100:
            return self.max_us
        rank = max(1, int(self.count * p / 100.0 + 0.999999))
        seen = 0
        for idx, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    return min(bucket_value(idx), self.max_us)
        return self.max_us

    @property
    def mean_us(self) -> float:
        return self.sum_us / self.count if self.count else 0.0

    def merge(self, other: LatencyHistogram) -> None:
        for idx, n in enumerate(other.counts):
            if n:
                self.counts[idx] += n
        self.count += other.count
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)

    def to_dict(self) -> dict[str, Any]:
        """Sparse form, for JSON between processes."""
        return {
            "buckets": {str(i): n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "sum_us": self.sum_us,
            "max_us": self.max_us,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        h = cls()
        for idx, n in data.get("buckets", {}).items():
            h.counts[int(idx)] += int(n)
        h.count = int(data.get("count", 0))
        h.sum_us = int(data.get("sum_us", 0))
        h.max_us = int(data.get("max_us", 0))
        return h

    def summary_ms(self) -> dict[str, float]:
        """p50/p90/p99/p99.9/max and mean, in milliseconds (3 decimals)."""
        return {
            "p50_ms": round(self.percentile(50) / 1000, 3),
            "p90_ms": round(self.percentile(90) / 1000, 3),
            "p99_ms": round(self.percentile(99) / 1000, 3),
            "p999_ms": round(self.percentile(99.9) / 1000, 3),
            "max_ms": round(self.max_us / 1000, 3),
            "mean_ms": round(self.mean_us / 1000, 3),
        }
