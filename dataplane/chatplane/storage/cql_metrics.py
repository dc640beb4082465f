"""What the CQL write path costs, counted by the session (for /metrics).

Every request the backend sends is counted by statement kind (the name it was
prepared under in scylla_statements.py, or "batch" / "ddl"), with its driver
latency (from `execute_async` to the callback, in seconds) and whether it was
a conditional write (a Paxos round). Batches also count the statements they
carry. `appends` counts stored messages, so a scrape gives statements and
conditional writes per message (docs/storage.md, "Metrics").
"""

from __future__ import annotations

import threading
from collections import Counter

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from chatplane import metrics

# Upper bounds (seconds) of the latency histogram: CQL requests take from
# well under a millisecond (a local write) to the request timeout.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64)


class CqlStats:
    """Counters of one session; updated from the event loop and read by scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.statements: Counter[str] = Counter()  # inside batches too
        self.conditional: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency_sum: dict[str, float] = {}
        self.latency_buckets: dict[str, list[int]] = {}
        self.batch_sizes = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.appends = 0
        # sequences taken (scylla_seq.py), by kind: "conversation" or "inbox";
        # inbox takes stay near zero while each inbox has one writer (im/inboxes.py)
        self.takes: Counter[str] = Counter()

    def request(self, kind: str, seconds: float, *, conditional: bool, failed: bool) -> None:
        with self._lock:
            self.requests[kind] += 1
            if conditional:
                self.conditional[kind] += 1
            if failed:
                self.errors[kind] += 1
            self.latency_sum[kind] = self.latency_sum.get(kind, 0.0) + seconds
            counts = self.latency_buckets.setdefault(kind, [0] * (len(BUCKETS) + 1))
            counts[_slot(BUCKETS, seconds)] += 1

    def took(self, sequence: str) -> None:
        with self._lock:
            self.takes[sequence] += 1

    def carried(self, kinds: list[str]) -> None:
        """The statements of one request (one, or a batch's)."""
        with self._lock:
            self.statements.update(kinds)
            if len(kinds) > 1 or not kinds:
                self.batch_sizes[_slot(BATCH_BUCKETS, len(kinds))] += 1
                self.batch_sum += len(kinds)

    def families(self) -> list[Metric]:
        with self._lock:
            found: list[Metric] = [
                metrics.labelled("counter", "chatplane_cql_requests_total",
                                 "CQL requests sent, by statement kind", "kind", self.requests),
                metrics.labelled("counter", "chatplane_cql_statements_total",
                                 "CQL statements sent (batched ones included), by kind", "kind",
                                 self.statements),
                metrics.labelled("counter", "chatplane_cql_conditional_total",
                                 "Paxos rounds (conditional writes, SERIAL reads), by kind",
                                 "kind", self.conditional),
                metrics.labelled("counter", "chatplane_cql_errors_total",
                                 "CQL requests that failed, by kind", "kind", self.errors),
                metrics.counter("chatplane_storage_appends_total",
                                "Messages stored (appends and group events)", self.appends),
                metrics.labelled("counter", "chatplane_cql_sequence_takes_total",
                                 "Sequences taken by this process (a conditional write and a"
                                 " seal each), by sequence kind", "sequence", self.takes),
            ]
            latency = HistogramMetricFamily("chatplane_cql_request_seconds",
                                            "Driver latency of CQL requests, by kind",
                                            labels=["kind"])
            for kind, counts in sorted(self.latency_buckets.items()):
                latency.add_metric([kind], metrics.cumulative(BUCKETS, counts),
                                   self.latency_sum[kind])
            batches = HistogramMetricFamily(
                "chatplane_cql_batch_statements", "Statements per CQL batch",
                buckets=metrics.cumulative(BATCH_BUCKETS, self.batch_sizes),
                sum_value=self.batch_sum)
        return [*found, latency, batches]


def _slot(bounds: tuple[float, ...], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)
