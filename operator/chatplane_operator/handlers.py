"""kopf handlers, and nothing else: watch events poke the work queue; the queue reconciles.

Secrets are not watched (that would need list/watch on every Secret): a deleted generated
Secret comes back on the next resync or the next event of the cluster.

No handler here changes anything by itself and none needs a finalizer: deleting a
ChatCluster lets Kubernetes' garbage collector remove its children through their owner
references, even while the operator is down. State shared by the handlers lives in the
operator-wide `memo` (`Runtime`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import kopf

from chatplane_operator import api, metrics
from chatplane_operator.peering import PeeringGate
from chatplane_operator.queueing import Key, WorkQueue
from chatplane_operator.reconciling import Reconciler
from chatplane_operator.specs import naming

log = logging.getLogger(__name__)
MANAGED = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}
CHILD_RESOURCES: tuple[tuple[str, str, str], ...] = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("policy", "v1", "poddisruptionbudgets"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("batch", "v1", "jobs"),
)


@dataclasses.dataclass
class Runtime:
    """What the handlers share; passed to kopf as the operator's memo."""

    reconciler: Reconciler
    gate: PeeringGate | None = None  # None: standalone
    queue: WorkQueue | None = None
    resync: float = 60.0
    task: asyncio.Task[None] | None = None
    known: set[Key] = dataclasses.field(default_factory=set)


ROLLOUT_POLL_S = 1.0  # while gateways drain, a pass this often follows them
# The liveness probe fails when the oldest pass has waited this long: far beyond one pass
# (each API call times out at 30 s), so only a wedged queue or worker restarts the pod.
STALLED_S = 600.0


async def _work(runtime: Runtime, key: Key) -> bool | float | None:
    gate = runtime.gate
    active = gate is None or await asyncio.to_thread(gate.active)
    metrics.LEADER.set(1 if active else 0)
    if not active:
        log.debug("paused in favour of a higher-priority peer: skip %s/%s", *key)
        return True  # come back after the resync interval
    try:
        outcome = await asyncio.to_thread(runtime.reconciler.reconcile, *key)
    except Exception as exc:
        metrics.failed(exc)
        log.exception("reconcile of %s/%s failed", *key)
        return False
    if not outcome.found:
        return None
    metrics.observe(outcome)
    if outcome.status is not None:
        metrics.observe_status(key[0], key[1], outcome.status)
    log.info("reconciled %s/%s in %.3fs: created %d updated %d deleted %d errors %s",
             key[0], key[1], outcome.seconds, outcome.created, outcome.updated,
             outcome.deleted, outcome.errors or "none")
    if outcome.ok and outcome.rolling:
        return ROLLOUT_POLL_S
    return outcome.ok


def _runtime(memo: Any) -> Runtime:
    runtime = memo.runtime
    assert isinstance(runtime, Runtime)
    return runtime


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    # No scanning of CRDs and namespaces: the operator then needs no cluster-wide read of
    # them (least privilege). The CRD must exist when it starts (Helm installs it first).
    settings.scanning.disabled = True
    # Watch only the objects the operator manages, filtered by the apiserver (not in memory).
    selector = ",".join(f"{k}={v}" for k, v in MANAGED.items())
    for group, version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = selector
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    runtime = _runtime(memo)

    async def work(key: Key) -> bool | float | None:
        return await _work(runtime, key)

    runtime.queue = WorkQueue(work, resync=runtime.resync)
    runtime.task = asyncio.create_task(runtime.queue.serve())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime.task is not None:
        runtime.task.cancel()
        await asyncio.gather(runtime.task, return_exceptions=True)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def cluster_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """New, changed or (re)listed ChatCluster: reconcile; deleted: forget it."""
    runtime = _runtime(memo)
    key = (body.metadata.namespace or "", body.metadata.name or "")
    if runtime.queue is None:
        return
    if event.get("type") == "DELETED":
        runtime.queue.forget(key)
        runtime.reconciler.forget(*key)
        metrics.forget(*key)
        runtime.known.discard(key)
        metrics.CLUSTERS.set(len(runtime.known))
        return
    runtime.known.add(key)
    metrics.CLUSTERS.set(len(runtime.known))
    observed = (body.get("status") or {}).get("observedGeneration")
    if event.get("type") in (None, "ADDED") or observed != body.metadata.get("generation"):
        runtime.queue.poke(key)


@kopf.on.probe(id="workqueue")
def workqueue(memo: kopf.Memo, **_: Any) -> dict[str, float]:
    """Liveness (kopf's endpoint answers 500 when a probe raises): the work queue moves."""
    queue = _runtime(memo).queue
    if queue is None:
        return {"depth": 0, "oldestSeconds": 0.0}
    depth, stalled = queue.depth(), queue.stalled_for()
    metrics.QUEUE_DEPTH.set(depth)
    metrics.QUEUE_STALLED.set(stalled)
    if stalled > STALLED_S:
        raise RuntimeError(f"work queue stalled: the oldest pass has waited {stalled:.0f}s "
                           f"(more than {STALLED_S:.0f}s)")
    return {"depth": depth, "oldestSeconds": round(stalled, 3)}


def _child_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A child changed or went away: reconcile its ChatCluster (repairs drift, refreshes
    the status from the workloads' status)."""
    runtime = _runtime(memo)
    owner = (body.metadata.labels or {}).get(naming.CLUSTER_LABEL)
    namespace = body.metadata.namespace
    if runtime.queue is not None and owner and namespace:
        runtime.queue.poke((namespace, owner))


for _group, _version, _plural in CHILD_RESOURCES:
    kopf.on.event(_group, _version, _plural, labels=MANAGED, id=f"child-{_plural}")(
        _child_changed)
