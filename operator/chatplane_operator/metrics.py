"""Prometheus metrics of the operator itself: reconciles, errors, durations, applied objects.

The default registry also exports `process_resident_memory_bytes`, which is how the
operator's memory use is reported.
"""

from __future__ import annotations

import prometheus_client as prom

from chatplane_operator.reconciling import Outcome

RECONCILES = prom.Counter(
    "chatplane_operator_reconciles_total", "Reconcile passes, by result.", ["result"])
ERRORS = prom.Counter(
    "chatplane_operator_reconcile_errors_total", "Reconcile passes that raised.", ["error"])
DURATION = prom.Histogram(
    "chatplane_operator_reconcile_duration_seconds", "Time of one reconcile pass.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
OBJECTS = prom.Counter(
    "chatplane_operator_objects_total", "Objects the operator changed, by action.", ["action"])
CLUSTERS = prom.Gauge(
    "chatplane_operator_chatclusters", "ChatClusters the operator knows.")


def observe(outcome: Outcome) -> None:
    RECONCILES.labels("ok" if outcome.ok else "degraded").inc()
    DURATION.observe(outcome.seconds)
    for action, n in (("created", outcome.created), ("updated", outcome.updated),
                      ("deleted", outcome.deleted)):
        if n:
            OBJECTS.labels(action).inc(n)


def failed(exc: BaseException) -> None:
    ERRORS.labels(type(exc).__name__).inc()


def serve(address: str, port: int) -> None:
    """Serve /metrics on a daemon thread (port 0: no metrics server)."""
    if port:
        prom.start_http_server(port, addr=address)
