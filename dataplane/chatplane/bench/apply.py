"""`chatplane bench apply`: `kubectl apply` a ChatCluster and time it to `Ready`.

Run where `kubectl` reaches the Kubernetes cluster (with the chart installed). Applies the
manifest, waits for the ChatCluster's `Ready` condition, and reports the time, then per tier
how long its pods took to start, from the pods' own status: scheduled → Ready (image, volume
and container start, the process's start, its readiness probe) and container started →
Ready (the process alone); and the size of the image they run, as the node reports it.
The cluster is left running (`bench rollout` can follow).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from chatplane.bench.kube import Kubectl, pods_of, ready, until
from chatplane.bench.report import emit
from chatplane.bench.spread import run_loop

TIERS = ("ipconf", "gateway", "im", "state")


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _condition_at(pod: dict[str, Any], kind: str) -> datetime | None:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == kind and c["status"] == "True":
            return _when(c["lastTransitionTime"])
    return None


def pod_start(pod: dict[str, Any]) -> tuple[float, float] | None:
    """(scheduled → Ready, container started → Ready) in seconds, None while not Ready."""
    scheduled, became_ready = _condition_at(pod, "PodScheduled"), _condition_at(pod, "Ready")
    if scheduled is None or became_ready is None:
        return None
    started = [_when(s["state"]["running"]["startedAt"])
               for s in pod["status"].get("containerStatuses") or []
               if "running" in s.get("state", {})]
    process_s = (became_ready - max(started)).total_seconds() if started else float("nan")
    return (became_ready - scheduled).total_seconds(), process_s


def starts_by_tier(kube: Kubectl, cluster: str) -> dict[str, dict[str, float]]:
    out = {}
    for tier in TIERS:
        starts = [s for p in pods_of(kube, cluster, tier) if (s := pod_start(p))]
        if starts:
            out[tier] = {"pods": len(starts),
                         "scheduled_to_ready_s_median": round(statistics.median(
                             s[0] for s in starts), 1),
                         "scheduled_to_ready_s_max": round(max(s[0] for s in starts), 1),
                         "process_to_ready_s_median": round(statistics.median(
                             s[1] for s in starts), 1)}
    return out


def image_size(nodes: list[dict[str, Any]], image: str) -> int | None:
    """The bytes of `image` as a node that holds it reports it (`status.images`: what
    the kubelet pulled or was given, unpacked), None if no node lists it."""
    for node in nodes:
        for held in node.get("status", {}).get("images") or []:
            if image in held.get("names", []):
                return int(held["sizeBytes"])
    return None


def image_of(kube: Kubectl, cluster: str) -> dict[str, Any]:
    """The image the cluster's gateways run, and its size on the node."""
    pods = pods_of(kube, cluster, "gateway")
    if not pods:
        return {}
    image = pods[0]["spec"]["containers"][0]["image"]
    size = image_size(list(kube.get("nodes")["items"]), image)
    return {"name": image, "mib": round(size / 2**20, 1) if size is not None else None}


async def run_apply(args: argparse.Namespace, manifest: str) -> dict[str, Any]:
    kube = Kubectl(args.namespace, args.kubeconfig)
    began = time.monotonic()
    name = await asyncio.to_thread(kube.apply, manifest)
    await until(f"{name} Ready", args.timeout, lambda: ready(kube.get("chatcluster", name)))
    ready_s = time.monotonic() - began
    status = kube.get("chatcluster", name).get("status", {})
    return {"cluster": f"{args.namespace}/{name}", "version": status.get("version"),
            "apply_to_ready_s": round(ready_s, 1), "pod_start": starts_by_tier(kube, name),
            "image": image_of(kube, name)}


def run_apply_command(args: argparse.Namespace) -> int:
    try:
        manifest = Path(args.manifest).read_text(encoding="utf-8")
        result = run_loop(run_apply(args, manifest))
    except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"bench apply: {exc!r}", file=sys.stderr)
        return 1
    emit(result, args.json)
    return 0


def add_parser(workloads: argparse._SubParsersAction) -> None:
    apply = workloads.add_parser(
        "apply", help="kubectl apply a ChatCluster: time to Ready, its pods' start times")
    apply.add_argument("--manifest", required=True, help="the ChatCluster's YAML")
    apply.add_argument("--namespace", default="default")
    apply.add_argument("--kubeconfig", help="else kubectl's own (KUBECONFIG, ~/.kube/config)")
    apply.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for Ready")
    apply.add_argument("--json", metavar="FILE")
    apply.set_defaults(func=run_apply_command)
