"""Which conversations the hot tier keeps: W-TinyLFU admission over weighted entries.

Chosen by measurement (docs/benchmarks.md, "Storage tiers (issue 18)";
`chatplane bench hotcache`): on Zipf(1.1) over 100,000 conversations it keeps
more of the hot set than LRU and than a HotRing-style per-bucket counter
policy, and a one-off scan (a broadcast that touches every user's events
conversation once) cannot flush the hot set, because a newcomer enters the
main area only if the frequency sketch has seen it more often than the entry
it would displace.

Layout (Einziger, Friedman, Manes, "TinyLFU", 2017): a small LRU window
(1% of the weight) takes every newcomer; what leaves the window duels the
main area's least recently used entry on estimated frequency. The main area
is a segmented LRU (probation, protected 80%). Entries carry a weight (the
messages of a conversation's run), so the bound is on messages, not keys.
"""

from __future__ import annotations

from collections import OrderedDict

_SEEDS = _S0, _S1, _S2, _S3 = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                               0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1
_HALVE = bytes(count >> 1 for count in range(256))


class FrequencySketch:
    """Count-min sketch of 4 rows of small counters (capped at 15), all halved
    every `sample` increments so that old popularity fades."""

    def __init__(self, expected_keys: int) -> None:
        width = 16
        while width < expected_keys:
            width <<= 1
        self._mask = width - 1
        self._rows = [bytearray(width) for _ in _SEEDS]
        self._sample = 10 * width
        self._added = 0

    def _slots(self, key: str) -> tuple[int, int, int, int]:
        h = hash(key) & _MASK64
        m = self._mask
        return (((h * _S0) & _MASK64) >> 40 & m, ((h * _S1) & _MASK64) >> 40 & m,
                ((h * _S2) & _MASK64) >> 40 & m, ((h * _S3) & _MASK64) >> 40 & m)

    def increment(self, key: str) -> None:
        # unrolled: this runs on every send and history read
        a, b, c, d = self._slots(key)
        r0, r1, r2, r3 = self._rows
        grew = False
        if r0[a] < 15:
            r0[a] += 1
            grew = True
        if r1[b] < 15:
            r1[b] += 1
            grew = True
        if r2[c] < 15:
            r2[c] += 1
            grew = True
        if r3[d] < 15:
            r3[d] += 1
            grew = True
        if grew:
            self._added += 1
            if self._added >= self._sample:
                self._age()

    def frequency(self, key: str) -> int:
        a, b, c, d = self._slots(key)
        r0, r1, r2, r3 = self._rows
        return min(r0[a], r1[b], r2[c], r3[d])

    def _age(self) -> None:
        for row in self._rows:  # in C: a Python loop over a wide sketch stalls the loop
            row[:] = row.translate(_HALVE)
        self._added //= 2


class WTinyLfu:
    """Residency of weighted keys under `capacity`; put/resize return the keys
    that left (possibly the newcomer itself: admission refused)."""

    def __init__(self, capacity: int, window_share: float = 0.01,
                 protected_share: float = 0.8) -> None:
        self.capacity = capacity
        self.window_max = max(1, int(capacity * window_share))
        self.main_max = max(1, capacity - self.window_max)
        self.protected_max = int(self.main_max * protected_share)
        self.sketch = FrequencySketch(capacity)
        self._window: OrderedDict[str, int] = OrderedDict()
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self._weights = {"window": 0, "probation": 0, "protected": 0}
        self.evictions = 0
        self.rejections = 0  # newcomers that lost the duel (one-off scans end here)

    def __contains__(self, key: str) -> bool:
        return key in self._window or key in self._probation or key in self._protected

    @property
    def weight(self) -> int:
        return sum(self._weights.values())

    def record(self, key: str) -> None:
        """One access (hit or miss): counted, and recency refreshed if resident."""
        self.sketch.increment(key)
        if key in self._window:
            self._window.move_to_end(key)
        elif key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:  # a second hit in main: promote
            weight = self._probation.pop(key)
            self._weights["probation"] -= weight
            self._protected[key] = weight
            self._weights["protected"] += weight
            while self._weights["protected"] > self.protected_max and len(self._protected) > 1:
                demoted, w = self._protected.popitem(last=False)
                self._weights["protected"] -= w
                self._probation[demoted] = w
                self._weights["probation"] += w

    def put(self, key: str, weight: int) -> list[str]:
        """Insert `key` or change its weight; the keys evicted to make room."""
        for area in ("window", "probation", "protected"):
            entries = self._area(area)
            if key in entries:
                self._weights[area] += weight - entries[key]
                entries[key] = weight
                break
        else:
            self._window[key] = weight
            self._weights["window"] += weight
        return self._evict()

    def remove(self, key: str) -> None:
        for area in ("window", "probation", "protected"):
            weight = self._area(area).pop(key, None)
            if weight is not None:
                self._weights[area] -= weight
                return

    def _area(self, area: str) -> OrderedDict[str, int]:
        return {"window": self._window, "probation": self._probation,
                "protected": self._protected}[area]

    def _main_weight(self) -> int:
        return self._weights["probation"] + self._weights["protected"]

    def _pop_victim(self) -> tuple[str, int, str] | None:
        for area in ("probation", "protected"):
            entries = self._area(area)
            if entries:
                key, weight = next(iter(entries.items()))
                return key, weight, area
        return None

    def _evict(self) -> list[str]:
        gone: list[str] = []
        while self._weights["window"] > self.window_max and self._window:
            candidate, weight = self._window.popitem(last=False)
            self._weights["window"] -= weight
            admitted = True
            while self._main_weight() + weight > self.main_max:
                victim = self._pop_victim()
                if victim is None:
                    break
                victim_key, victim_weight, area = victim
                if self.sketch.frequency(candidate) <= self.sketch.frequency(victim_key):
                    admitted = False
                    break
                del self._area(area)[victim_key]
                self._weights[area] -= victim_weight
                gone.append(victim_key)
                self.evictions += 1
            if admitted and weight <= self.main_max:
                self._probation[candidate] = weight
                self._weights["probation"] += weight
            else:
                gone.append(candidate)
                self.rejections += 1
        # a resident entry that grew past the main area's share: oldest go first
        while self._main_weight() > self.main_max:
            victim = self._pop_victim()
            if victim is None:
                break
            victim_key, victim_weight, area = victim
            del self._area(area)[victim_key]
            self._weights[area] -= victim_weight
            gone.append(victim_key)
            self.evictions += 1
        return gone
