"""The replication lag during a region bench, as the regions report it.

`GET /v1/peers` on each region's admin port gives, per peer, `replication.lag`:
the entries of the peer's log it announced (its head in the newest batch) that
are not applied here yet, and `replication.applied_to`. A `LagSampler` reads
every region's `/v1/peers` every `SAMPLE_S` in a thread of its own (so sampling
shares no event loop with the bench's clients) and `summary()` gives, per
direction (`us<-eu`: us applying eu's log), p50 / p99 / max in entries and, in
seconds, the lag divided by the rate at which that direction applied entries
over the sampled window (an estimate: the lag in entries at the rate that
drains them). The gauge cannot see what the stream has not announced yet; the
send-to-receipt latency of the bench is the time figure to trust.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

SAMPLE_S = 0.25


@dataclass
class LagSample:
    at: float  # monotonic seconds
    lag: int  # entries
    applied_to: int


def read_peers(admin_url: str) -> dict[str, Any]:
    """`/v1/peers` of the region at `admin_url`, {} when it cannot be read."""
    try:
        with urllib.request.urlopen(admin_url.rstrip("/") + "/v1/peers", timeout=2) as resp:
            found: dict[str, Any] = json.loads(resp.read())
            return found
    except (OSError, ValueError):
        return {}


def _quantile(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LagSampler:
    """Samples the regions at `admin_urls` (name -> admin base URL) while entered."""

    def __init__(self, admin_urls: dict[str, str], every_s: float = SAMPLE_S) -> None:
        self.admin_urls = admin_urls
        self.every_s = every_s
        self.samples: dict[str, list[LagSample]] = {}  # "us<-eu" -> samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, url in self.admin_urls.items():
                now = time.monotonic()
                for peer in read_peers(url).get("peers", []):
                    repl = peer.get("replication")
                    if isinstance(repl, dict) and "lag" in repl:
                        self.samples.setdefault(f"{name}<-{peer.get('name')}", []).append(
                            LagSample(now, int(repl["lag"]), int(repl.get("applied_to", 0))))
            self._stop.wait(self.every_s)

    def __enter__(self) -> LagSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per direction: samples, entries p50 / p99 / max, the apply rate, seconds."""
        out: dict[str, dict[str, Any]] = {}
        for direction, samples in self.samples.items():
            ordered = sorted(s.lag for s in samples)
            span = samples[-1].at - samples[0].at
            applied = samples[-1].applied_to - samples[0].applied_to
            rate = applied / span if span > 0 else 0.0
            row: dict[str, Any] = {
                "samples": len(ordered), "p50": _quantile(ordered, 0.5),
                "p99": _quantile(ordered, 0.99), "max": ordered[-1],
                "applied": applied, "apply_rate": round(rate, 1),
            }
            row["p50_s"] = round(row["p50"] / rate, 3) if rate > 0 else None
            row["max_s"] = round(row["max"] / rate, 3) if rate > 0 else None
            out[direction] = row
        return out
