"""Prometheus metrics through `prometheus_client`, in base units (seconds, bytes).

The hot path keeps its figures as plain attributes and `Histogram`s (one bisect per
observation, no lock, no label lookup); nothing is incremented in prometheus_client
objects per message. Each part of a process (a tier's service, the storage, the
supervisor...) offers `families()`, which turns its figures into metric families when
/metrics is scraped. An app puts its parts in its own `CollectorRegistry` with
`registry()`, which refuses a name that two parts both export: `chatplane up` runs every
tier in one process and must show each figure once. No global registry: tests run several
apps in one process.
"""

from __future__ import annotations

import bisect
import os
import resource
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

# Upper bounds, in seconds, of the latency histograms: a local call takes well under a
# millisecond, a slow one up to the request deadlines (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Source = Callable[[], Iterable[Metric]]


def counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    """A counter family; `name` ends in `_total` (the exposition keeps it)."""
    return CounterMetricFamily(name, help_text, value=value)


def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def labelled(kind: str, name: str, help_text: str, label: str,
             values: Mapping[str, float]) -> Metric:
    """A counter or gauge family with one label, a sample per key of `values`."""
    family: Metric = (CounterMetricFamily(name, help_text, labels=[label]) if kind == "counter"
                      else GaugeMetricFamily(name, help_text, labels=[label]))
    for key, value in sorted(values.items()):
        family.add_metric([key], value)  # type: ignore[attr-defined]
    return family


class Histogram:
    """Counts per bucket, kept by the code that observes (cheap: no lock; a writer thread
    that observes guards its reads itself); `family()` renders it at scrape time."""

    def __init__(self, name: str, help_text: str,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        """One observation, in the histogram's unit (seconds for a latency)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.help, buckets=cumulative(self.buckets,
                                                                               self.counts),
                                     sum_value=self.total)


def cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one past every bound) as Prometheus' cumulative
    buckets, `+Inf` last."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((floatToGoString(bound), running))
    out.append(("+Inf", running + counts[-1]))
    return out


class Readings:
    """Figures registered with the function that reads them at scrape time."""

    def __init__(self) -> None:
        self._reads: list[tuple[str, str, str, Callable[[], float]]] = []

    def counter(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._reads.append(("counter", name, help_text, read))

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._reads.append(("gauge", name, help_text, read))

    def families(self) -> Iterator[Metric]:
        for kind, name, help_text, read in self._reads:
            yield (counter if kind == "counter" else gauge)(name, help_text, read())


class Metrics(Readings):
    """A gateway's (and the state tier's) counters: attributes the hot path increments."""

    COUNTERS = (
        ("frames_in", "frames received from clients"),
        ("frames_out", "frames sent to clients"),
        ("pushed", "inbox entries pushed to devices"),
        ("retransmitted", "inbox entries pushed again after an ack timeout"),
        ("logins", "accepted logins"),
        ("login_failures", "refused logins"),
        ("protocol_errors", "connections closed for a protocol violation"),
    )

    def __init__(self) -> None:
        super().__init__()
        self.frames_in = 0
        self.frames_out = 0
        self.pushed = 0
        self.retransmitted = 0
        self.logins = 0
        self.login_failures = 0
        self.protocol_errors = 0
        self.send_latency = Histogram("chatplane_send_latency_seconds",
                                      "send to ack, server side")

    def families(self) -> Iterator[Metric]:
        for name, help_text in self.COUNTERS:
            yield counter(f"chatplane_{name}_total", help_text, getattr(self, name))
        yield from super().families()
        yield self.send_latency.family()


def process_families() -> Iterator[Metric]:
    """RSS and CPU of this process under the names the benches read (Linux /proc);
    prometheus_client's `process_*` figures are exported too (`registry()`)."""
    try:
        with open("/proc/self/statm") as fh:
            rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)
    yield gauge("chatplane_process_rss_bytes", "resident memory", rss)
    yield counter("chatplane_process_cpu_seconds_total", "user+system CPU",
                  usage.ru_utime + usage.ru_stime)


class _Part:
    """One part's families as a prometheus_client collector, read at each scrape."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return list(self.source())


def registry(*sources: Source) -> CollectorRegistry:
    """A registry of this app's parts, the process figures and Python's (GC, version).
    Each part is collected once here, so a name two parts export fails now (ValueError),
    not as a doubled series in a scrape."""
    found = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=found)
    PlatformCollector(registry=found)
    GCCollector(registry=found)
    for source in (process_families, *sources):
        found.register(_Part(source))  # type: ignore[arg-type]
    return found


def exposition(reg: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and content type of a scrape: OpenMetrics when the scraper asks for it
    (Prometheus does), else the text format."""
    encode, content_type = choose_encoder(accept)
    return encode(reg), content_type
