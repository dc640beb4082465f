"""Conversation sizes and the fan-out they cause: the distribution and its simulation.

A distribution is written as comma-separated `KIND=SHARE` items whose shares
(of messages) add up to 1:

    direct=0.7,zipf:2.0:3:10000=0.3

- `direct`: a 1:1 conversation (2 members);
- `fixed:N`: groups of exactly N members;
- `zipf:S:MIN:MAX`: groups whose size k in MIN..MAX has probability
  proportional to k^-S (a few huge groups, many small ones).

`expected_members` is the exact mean; `simulate` draws sizes message by
message (the check on the arithmetic, and the spread: a p99 message reaches
far more members than the mean); `draw_sizes` gives the same draws to a real
run (tests/test_capacity.py) so its counted deliveries can be compared.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass


class DistributionError(ValueError):
    """An unusable --group-size-distribution (one line, says what)."""


@dataclass(frozen=True)
class Part:
    share: float
    sizes: tuple[int, ...]
    cumulative: tuple[float, ...]  # of each size's weight

    @property
    def mean(self) -> float:
        total = self.cumulative[-1]
        weights = [b - a for a, b in zip((0.0, *self.cumulative), self.cumulative, strict=False)]
        return sum(s * w for s, w in zip(self.sizes, weights, strict=True)) / total

    def draw(self, rng: random.Random) -> int:
        x = rng.random() * self.cumulative[-1]
        return self.sizes[min(bisect.bisect_right(self.cumulative, x), len(self.sizes) - 1)]


def _part(kind: str, share: float) -> Part:
    fields = kind.split(":")
    if fields == ["direct"]:
        return Part(share, (2,), (1.0,))
    try:
        if fields[0] == "fixed" and len(fields) == 2 and int(fields[1]) >= 2:
            return Part(share, (int(fields[1]),), (1.0,))
        if fields[0] == "zipf" and len(fields) == 4:
            s, low, high = float(fields[1]), int(fields[2]), int(fields[3])
            if s > 0 and 2 <= low <= high <= 10_000_000:
                sizes = tuple(range(low, high + 1))
                return Part(share, sizes, tuple(itertools.accumulate(k ** -s for k in sizes)))
    except ValueError:
        pass
    raise DistributionError(f"group size part {kind!r}: use direct, fixed:N (N >= 2) or "
                            "zipf:S:MIN:MAX (S > 0, 2 <= MIN <= MAX)")


def parse(text: str) -> list[Part]:
    parts = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        kind, eq, share = item.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not eq or not 0 < value <= 1:
            raise DistributionError(f"group size item {item!r}: write KIND=SHARE with a share "
                                    "in (0, 1]")
        parts.append(_part(kind.strip(), value))
    if not parts or abs(sum(p.share for p in parts) - 1) > 1e-6:
        raise DistributionError(f"group size shares must add up to 1 (got "
                                f"{sum(p.share for p in parts):g})")
    return parts


def expected_members(parts: list[Part], large_threshold: int) -> tuple[float, float]:
    """(mean members a message reaches in write-diffusion conversations,
    in large groups above the threshold) per message."""
    small = large = 0.0
    for p in parts:
        cut = bisect.bisect_right(p.sizes, large_threshold)
        total = p.cumulative[-1]
        weights = [b - a for a, b in zip((0.0, *p.cumulative), p.cumulative, strict=False)]
        small += p.share * sum(s * w for s, w in zip(p.sizes[:cut], weights[:cut], strict=True)) / total
        large += p.share * sum(s * w for s, w in zip(p.sizes[cut:], weights[cut:], strict=True)) / total
    return small, large


def draw_sizes(parts: list[Part], count: int, seed: int) -> list[int]:
    """The member count of `count` messages' conversations, drawn."""
    rng = random.Random(seed)
    shares = list(itertools.accumulate(p.share for p in parts))
    return [parts[min(bisect.bisect_right(shares, rng.random() * shares[-1]), len(parts) - 1)]
            .draw(rng) for _ in range(count)]


def simulate(parts: list[Part], messages: int, seed: int = 1) -> dict[str, float]:
    """Mean and tail of members reached per message, by drawing."""
    sizes = sorted(draw_sizes(parts, messages, seed))
    return {"messages": messages, "mean": sum(sizes) / messages,
            "p50": sizes[messages // 2], "p99": sizes[min(messages - 1, messages * 99 // 100)],
            "max": sizes[-1]}
