"""`drain.Fleet` over one region's gateway StatefulSet pods, and one rollout step per pass.

The StatefulSet uses `updateStrategy: OnDelete`, so a template change restarts nothing; the
pods carry the template's revision (`chatplane.dev/revision`), and a pod whose revision is
not the StatefulSet's is replaced by the drain rollout. All rollout state lives on the pods,
so an operator restart resumes where the last one stopped:

Drain calls go to the pod's admin port (`ports.admin`) with the cluster's admin secret
(`Authorization: Bearer`, from the generated Secret): a gateway refuses a drain without it.

- *draining* is the pod annotation `chatplane.dev/draining-since` (epoch seconds), written
  before the drain call, so the drain is followed and never started twice;
- *replacing* is deleting the pod, by uid: the StatefulSet controller creates it again from
  the current template, at the new revision, under the same name; a pod already being
  deleted counts as missing (its preStop drains it), never as one to replace again;
- a new pod's readiness timeout counts from its `creationTimestamp`.

The pods and their connection counts are the pass's reads (`podreading.RegionReads`):
each running pod's `GET /admin/drain` was read once for the whole pass, with every other
pod's, so the rollout step asks no gateway again. Drain calls and pod deletions are
synchronous I/O wrapped for the async `Fleet` protocol; the reconciler calls
`step_region()` from its worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from typing import Any

from chatplane_operator import api, drain, podreading
from chatplane_operator.applying import ApiError, Applier
from chatplane_operator.counting import running_url
from chatplane_operator.specs import naming

log = logging.getLogger(__name__)


def _created(pod: dict[str, Any]) -> float:
    stamp = pod.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return time.time()
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _ordinal(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class KubeFleet:
    """The gateway pods of `region` as this pass read them, driven through the API and
    their drain endpoints."""

    def __init__(self, applier: Applier, cluster: api.ChatCluster, region: api.Region,
                 admin: drain.GatewayAdmin, reads: podreading.RegionReads,
                 access: drain.AdminAccess) -> None:
        self.applier = applier
        self.cluster = cluster
        self.region = region
        self.admin = admin
        self.reads = reads
        self.access = access
        self._pods = {str(p["metadata"]["name"]): p for p in reads.gateways}

    def _url(self, pod: dict[str, Any]) -> str | None:
        return running_url(pod, self.cluster.ports.admin)

    async def gateways(self) -> list[drain.Gateway]:
        out = []
        for name, pod in sorted(self._pods.items()):
            if pod["metadata"].get("deletionTimestamp"):
                continue  # already going (its preStop drains it): missing, not to replace
            notes = pod["metadata"].get("annotations") or {}
            count = self.reads.connections.get(name)  # None: not running, or no answer
            since = notes.get(naming.DRAINING_SINCE)
            out.append(drain.Gateway(
                name=name, version=notes.get(naming.REVISION, ""), ready=_ready(pod),
                connections=count or 0, draining_since=float(since) if since else None,
                started_at=_created(pod), ordinal=_ordinal(name)))
        return out

    async def expected(self) -> int:
        return self.region.tiers["gateway"].replicas

    async def start_drain(self, name: str, rate: float, deadline_s: float) -> None:
        patch = {"metadata": {"annotations": {naming.DRAINING_SINCE: f"{time.time():.3f}"}}}
        await asyncio.to_thread(self.applier.merge_patch, "Pod", self.cluster.namespace, name,
                                patch)
        url = self._url(self._pods.get(name, {}))
        if url is None:
            return  # not running: it holds nobody; the next pass replaces it
        try:
            await self.admin.drain(url, rate, deadline_s, self.access)
        except drain.AdminRefused as exc:  # the admin secret is wrong: say so loudly
            log.error("drain call to %s refused: %s; it is replaced at the drain deadline",
                      name, exc)
        except OSError as exc:  # unreachable: it is replaced at the deadline at the latest
            log.warning("drain call to %s (%s) failed: %s", name, url, exc)

    async def replace(self, name: str, version: str) -> None:
        # By uid: the pod this pass read, never a newer one the StatefulSet made under the
        # same name meanwhile (that happened on a real node: the new pod was deleted)
        uid = self._pods.get(name, {}).get("metadata", {}).get("uid")
        await asyncio.to_thread(self.applier.delete, "Pod", self.cluster.namespace, name, uid)


@dataclasses.dataclass(frozen=True)
class RegionRollout:
    """One pass's rollout step in a region, for the status and the Events."""

    progress: drain.Progress
    step: drain.Step
    events: list[tuple[str, str]]

    def status(self, version: str) -> dict[str, Any]:
        p = self.progress
        out: dict[str, Any] = {
            "targetVersion": version, "revision": p.target,
            "gatewaysUpdated": f"{p.updated}/{p.total}",
            "draining": ", ".join(p.draining), "connectionsLeft": p.connections_left,
            "phase": ("Paused" if p.paused else "Done" if self.step.action == "done"
                      else "Draining" if p.draining else "Waiting"),
        }
        if p.paused:
            out["paused"] = p.paused
        return out


def policy(cluster: api.ChatCluster) -> drain.Policy:
    u = cluster.upgrade
    return drain.Policy(rate=float(u.drain_rate), deadline_s=float(u.drain_deadline_seconds),
                        max_unavailable=u.max_unavailable,
                        ready_timeout_s=float(u.ready_timeout_seconds))


def step_region(applier: Applier, cluster: api.ChatCluster, region: api.Region,
                revision: str, admin: drain.GatewayAdmin,
                reads: podreading.RegionReads, access: drain.AdminAccess,
                ) -> RegionRollout | None:
    """One orchestrator tick for `region` towards `revision`, on this pass's reads; None
    when the API fails or the pods could not be listed (the pass goes on; the next one
    tries again)."""
    if not reads.listed:
        return None
    fleet = KubeFleet(applier, cluster, region, admin, reads, access)
    orchestrator = drain.Orchestrator(fleet, revision, policy(cluster))
    try:
        step, progress, events = asyncio.run(orchestrator.tick())
    except ApiError as exc:
        log.warning("rollout step in %s/%s failed: %s", cluster.name, region.name, exc)
        return None
    return RegionRollout(progress, step, events)

