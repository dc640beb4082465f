"""Prometheus metrics of the operator itself: reconciles, errors, durations, applied objects,
the work queue, leadership, and each ChatCluster's conditions and rollout as its last pass
wrote them (what the chart's PrometheusRule alerts on). Base units: seconds.

The default registry also exports `process_resident_memory_bytes`, which is how the
operator's memory use is reported.
"""

from __future__ import annotations

from typing import Any

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
QUEUE_DEPTH = prom.Gauge(
    "chatplane_operator_workqueue_depth", "ChatClusters being reconciled or due now.")
QUEUE_STALLED = prom.Gauge(
    "chatplane_operator_workqueue_oldest_seconds",
    "How long the oldest running or overdue pass has waited (the liveness probe fails past "
    "handlers.STALLED_S).")
LEADER = prom.Gauge(
    "chatplane_operator_leader", "1 while this replica is the active one (peering), else 0.")
CONDITION = prom.Gauge(
    "chatplane_operator_cluster_condition",
    "A ChatCluster condition: 1 for its current status, 0 for the others.",
    ["namespace", "cluster", "type", "status"])
GATEWAYS = prom.Gauge(
    "chatplane_operator_rollout_gateways",
    "Gateway pods of a region in the drain rollout, by state (updated, total, draining).",
    ["namespace", "cluster", "region", "state"])
PAUSED = prom.Gauge(
    "chatplane_operator_rollout_paused", "1 while a region's rollout is paused.",
    ["namespace", "cluster", "region"])
PEERS_DOWN = prom.Gauge(
    "chatplane_operator_peers_unreachable",
    "Peers a region's im pods report not Reachable (Unreachable, Mismatch, NotListed).",
    ["namespace", "cluster", "region"])
_STATUSES = ("True", "False", "Unknown")
# The label sets exported per ChatCluster, to drop them when it is deleted
_SERIES: dict[tuple[str, str], set[tuple[prom.Gauge, tuple[str, ...]]]] = {}


def _set(gauge: prom.Gauge, labels: tuple[str, ...], value: float) -> None:
    gauge.labels(*labels).set(value)
    _SERIES.setdefault((labels[0], labels[1]), set()).add((gauge, labels))


def observe(outcome: Outcome) -> None:
    RECONCILES.labels("ok" if outcome.ok else "degraded").inc()
    DURATION.observe(outcome.seconds)
    for action, n in (("created", outcome.created), ("updated", outcome.updated),
                      ("deleted", outcome.deleted)):
        if n:
            OBJECTS.labels(action).inc(n)


def observe_status(namespace: str, cluster: str, status: dict[str, Any]) -> None:
    """Export what the pass wrote into `status` (conditions, rollouts, peers)."""
    for cond in status.get("conditions") or []:
        for value in _STATUSES:
            _set(CONDITION, (namespace, cluster, cond["type"], value),
                 1 if cond["status"] == value else 0)
    for region in status.get("regions") or []:
        name = region["name"]
        rollout = region.get("rollout") or {}
        updated, _, total = str(rollout.get("gatewaysUpdated", "0/0")).partition("/")
        draining = [p for p in str(rollout.get("draining") or "").split(", ") if p]
        for state, n in (("updated", updated), ("total", total), ("draining", len(draining))):
            _set(GATEWAYS, (namespace, cluster, name, state), int(n or 0))
        _set(PAUSED, (namespace, cluster, name), 1 if rollout.get("paused") else 0)
        _set(PEERS_DOWN, (namespace, cluster, name),
             sum(1 for p in region.get("peers") or [] if p.get("state") != "Reachable"))


def forget(namespace: str, cluster: str) -> None:
    """A deleted ChatCluster: drop its series."""
    for gauge, labels in _SERIES.pop((namespace, cluster), set()):
        gauge.remove(*labels)


def failed(exc: BaseException) -> None:
    ERRORS.labels(type(exc).__name__).inc()


def serve(address: str, port: int) -> None:
    """Serve /metrics on a daemon thread (port 0: no metrics server)."""
    if port:
        prom.start_http_server(port, addr=address)
