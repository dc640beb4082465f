"""Prometheus text exposition for the few figures each process keeps.

Deliberately small: counters and gauges are plain attributes read at scrape
time, histograms have fixed buckets. No global registry: each service owns its
`Metrics` and renders it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 2500, 5000)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_MS):
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.n}')
        lines.append(f"{self.name}_sum {self.total}")
        lines.append(f"{self.name}_count {self.n}")
        return lines


class Metrics:
    """Counters are attributes; gauges are callables registered by services."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.pushed = 0
        self.retransmitted = 0
        self.logins = 0
        self.login_failures = 0
        self.protocol_errors = 0
        self.send_latency = Histogram("chatplane_send_latency_ms", "send to ack, server side")
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        lines = []
        for name, help_text in (
            ("frames_in", "frames received from clients"),
            ("frames_out", "frames sent to clients"),
            ("pushed", "inbox entries pushed to devices"),
            ("retransmitted", "inbox entries pushed again after an ack timeout"),
            ("logins", "accepted logins"),
            ("login_failures", "refused logins"),
            ("protocol_errors", "connections closed for a protocol violation"),
        ):
            metric = f"chatplane_{name}_total"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter",
                      f"{metric} {getattr(self, name)}"]
        for name, (help_text, read) in self._gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read()}"]
        lines += self.send_latency.render()
        return "\n".join(lines) + "\n"
