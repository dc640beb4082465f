"""`chatplane bench hotcache`: hot-spot policies compared on a skewed workload
(the measurement behind im/admission.py).

    chatplane bench hotcache --conversations 100000 --cache 1000 --requests 1000000

Each request touches one conversation drawn from Zipf(s) (rank k with
probability proportional to k^-s); a hit is a request whose conversation is
resident. Every policy sees the same sequence and holds the same number of
conversations. `--scan-every N --scan-length L` interleaves one-off scans: every
N requests, L conversations never seen before are touched once each (a
broadcast into every user's events conversation), the pattern that flushes
an LRU. Prints one JSON object per policy (hit rate overall and on the
Zipf requests alone, evictions).

The policies:
- lru: least recently used (the hot tier before issue 18);
- hotring: HotRing's idea (Chen et al., FAST'20) adapted to a cache: keys
  hash into rings of a fixed size, each entry counts its accesses, and a
  newcomer into a full ring replaces the ring's least accessed entry; counts
  halve whenever a ring evicts, so old heat fades;
- wtinylfu: im/admission.py, the policy the im runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from chatplane.im.admission import WTinyLfu


class Policy(Protocol):
    @property
    def evictions(self) -> int: ...

    def access(self, key: str) -> bool: ...


class Lru:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self.evictions = 0

    def access(self, key: str) -> bool:
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
            self.evictions += 1
        return False


class HotRing:
    RING = 8  # entries per ring (HotRing's collision chains are short)

    def __init__(self, capacity: int) -> None:
        self._rings: list[dict[str, int]] = [{} for _ in range(max(1, capacity // self.RING))]
        self.evictions = 0

    def access(self, key: str) -> bool:
        ring = self._rings[hash(key) % len(self._rings)]
        if key in ring:
            ring[key] += 1
            return True
        if len(ring) >= self.RING:
            coldest = min(ring, key=ring.__getitem__)
            del ring[coldest]
            self.evictions += 1
            for other in ring:
                ring[other] >>= 1
        ring[key] = 1
        return False


class TinyLfu:
    """The im's policy with unit weights."""

    def __init__(self, capacity: int) -> None:
        self._policy = WTinyLfu(capacity)

    @property
    def evictions(self) -> int:
        return self._policy.evictions + self._policy.rejections

    def access(self, key: str) -> bool:
        hit = key in self._policy
        self._policy.record(key)
        if not hit:
            self._policy.put(key, 1)
        return hit


POLICIES: dict[str, Callable[[int], Policy]] = {"lru": Lru, "hotring": HotRing,
                                                "wtinylfu": TinyLfu}


def zipf_requests(conversations: int, s: float, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    ranks = list(range(conversations))
    rng.shuffle(ranks)  # popularity unrelated to the key's name
    weights = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(conversations)))
    return [f"c{ranks[i]}" for i in
            (int(x) for x in rng.choices(range(conversations), cum_weights=weights, k=count))]


def workload(requests: list[str], scan_every: int, scan_length: int) -> Iterator[tuple[str, bool]]:
    """(key, part of a scan) in order."""
    scans = itertools.count()
    for i, key in enumerate(requests):
        if scan_every and i and i % scan_every == 0:
            n = next(scans)
            for j in range(scan_length):
                yield f"scan{n}-{j}", True
        yield key, False


def measure(name: str, capacity: int, requests: list[str], scan_every: int,
            scan_length: int) -> dict[str, object]:
    policy: Policy = POLICIES[name](capacity)
    hits = total = zipf_hits = zipf_total = 0
    for key, scanning in workload(requests, scan_every, scan_length):
        hit = policy.access(key)
        hits += hit
        total += 1
        if not scanning:
            zipf_hits += hit
            zipf_total += 1
    return {"policy": name, "capacity": capacity, "requests": total,
            "hit_rate": round(hits / total, 4), "zipf_hit_rate": round(zipf_hits / zipf_total, 4),
            "evictions": policy.evictions}


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser("hotcache", help="hit rates of the hot tier's policy against LRU "
                             "on a Zipf workload (a simulation: no server)",
                             description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=100_000)
    p.add_argument("--cache", type=int, default=1_000, help="conversations held")
    p.add_argument("--requests", type=int, default=1_000_000)
    p.add_argument("--zipf", type=float, default=1.1, help="the exponent s")
    p.add_argument("--scan-every", type=int, default=0)
    p.add_argument("--scan-length", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    names = args.policies.split(",")
    unknown = [n for n in names if n not in POLICIES]
    if unknown or args.cache < 1 or args.conversations < 1 or args.requests < 1 or args.zipf <= 0:
        print("chatplane bench hotcache: need --cache, --conversations, --requests >= 1, "
              f"--zipf > 0 and policies among {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    requests = zipf_requests(args.conversations, args.zipf, args.requests, args.seed)
    for name in names:
        print(json.dumps(measure(name, args.cache, requests, args.scan_every, args.scan_length)),
              flush=True)
    return 0
