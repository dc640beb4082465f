"""What a ChatCluster's pods say of themselves, from one list of them per pass (pure).

Two things the workloads' own status cannot tell:
- which versions actually run: the `app.kubernetes.io/version` label of every *ready* tier
  pod (the label comes from the template the pod was created from, so a pod of the old
  template says the old version until it is replaced). `status.version` is built from it,
  never from the spec; during a rollout it names every version that serves;
- which pods the scheduler cannot place, with its own message: a region whose nodes lack
  the region label (`placement.regionLabel`) otherwise sits at 0 ready pods with no word why.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import naming

VERSION_LABEL = "app.kubernetes.io/version"
COMPONENT_LABEL = "app.kubernetes.io/component"
Pod = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RegionPods:
    """One region's tier pods: ready pods per version, and the unschedulable ones."""

    versions: Mapping[str, int] = dataclasses.field(default_factory=dict)
    unschedulable: tuple[str, ...] = ()  # "<pod>: <the scheduler's message>"


def ready(pod: Pod) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def unschedulable(pod: Pod) -> str | None:
    """The scheduler's message for a pending pod it cannot place; None otherwise."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for c in status.get("conditions") or []:
        if (c.get("type") == "PodScheduled" and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"):
            return str(c.get("message") or "Unschedulable")
    return None


def by_region(pods: Iterable[Pod], regions: Sequence[api.Region]) -> dict[str, RegionPods]:
    """Group the cluster's pods (tier pods only: not the migration Job's) per region."""
    versions: dict[str, Counter[str]] = {r.name: Counter() for r in regions}
    stuck: dict[str, list[str]] = {r.name: [] for r in regions}
    for pod in pods:
        labels = pod.get("metadata", {}).get("labels") or {}
        region = labels.get(naming.REGION_LABEL)
        if region not in versions or labels.get(COMPONENT_LABEL) not in api.TIERS:
            continue
        if ready(pod):
            versions[region][str(labels.get(VERSION_LABEL, ""))] += 1
        why = unschedulable(pod)
        if why is not None:
            stuck[region].append(f"{pod['metadata']['name']}: {why}")
    return {name: RegionPods(dict(versions[name]), tuple(sorted(stuck[name])))
            for name in versions}


def unschedulable_message(pods: RegionPods | None, region: api.Region) -> str:
    """What to tell about `region`'s unschedulable pods ("" when there are none)."""
    if pods is None or not pods.unschedulable:
        return ""
    hint = ""
    label = region.placement.region_label
    if label:
        value = region.placement.region_value or region.name
        hint = (f" (its pods need a node labelled {label}={value}: "
                f"`kubectl label node NODE {label}={value}`, or set placement.regionLabel)")
    first = pods.unschedulable[0]
    more = f" and {len(pods.unschedulable) - 1} more" if len(pods.unschedulable) > 1 else ""
    return f"pods cannot be scheduled: {first}{more}{hint}"


def versions_status(regions: Iterable[RegionPods | None]) -> dict[str, Any]:
    """`status.version` ("0.1.0", or "0.1.0, 0.2.0" mid-rollout; "" while no pod is ready)
    and `status.versions` (ready pods per version), from the pods; {} when no region's pods
    were listed."""
    listed = [pods for pods in regions if pods is not None]
    if not listed:
        return {}  # the pods could not be listed: say nothing rather than "none run"
    total: Counter[str] = Counter()
    for pods in listed:
        total.update(pods.versions)
    ordered = sorted(total)
    return {"version": ", ".join(ordered),
            "versions": [{"version": v, "readyPods": total[v]} for v in ordered]}
