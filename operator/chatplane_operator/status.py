"""Pure status computation: observed workloads in, the ChatCluster's `status` out.

Conditions follow metav1.Condition (type, status, reason, message, lastTransitionTime,
observedGeneration). Each region gets its own Available/Progressing/Degraded conditions and
the cluster-level ones aggregate them (scylla-operator style); `Ready` is what
`kubectl wait --for=condition=Ready` waits on. A condition is `Unknown` when the operator
cannot tell (a region it could not read, peers no data plane has reported on yet).

The storage migration gates the tiers (specs/jobs.py): while its Job runs the cluster is
Progressing (`MigrationRunning`) and not Ready; a Job that failed makes it Degraded
(`MigrationFailed`, with the Job's reason and message). `status.version` is what the ready
pods run (their version label), never the spec: several versions, during a rollout.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from chatplane_operator import api, lags, podstate, reachability
from chatplane_operator.specs import config

C = api.ConditionType
R = api.Reason


@dataclasses.dataclass(frozen=True)
class WorkloadState:
    """What a Deployment or StatefulSet reports."""

    replicas: int = 0
    ready: int = 0
    updated: int = 0
    up_to_date: bool = False  # the controller has observed the latest generation

    @classmethod
    def from_object(cls, obj: Mapping[str, Any] | None) -> WorkloadState:
        if not obj:
            return cls()
        status = obj.get("status") or {}
        generation = int(obj.get("metadata", {}).get("generation") or 0)
        return cls(
            replicas=int(obj.get("spec", {}).get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            up_to_date=int(status.get("observedGeneration") or 0) >= generation > 0,
        )


@dataclasses.dataclass(frozen=True)
class RegionObservation:
    tiers: Mapping[str, WorkloadState]
    connections: int = 0
    error: tuple[str, str] | None = None  # (reason, message) when reconciling failed
    rollout: Mapping[str, Any] | None = None  # the gateway drain rollout (fleet_kube)
    peers: reachability.RegionPeers | None = None  # what its im pods say of its peers
    pods: podstate.RegionPods | None = None  # its pods as listed (None: not listed)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    ctype: str, ok: bool | None, reason: str, message: str, generation: int,
    previous: Sequence[Mapping[str, Any]] = (), now: str | None = None,
) -> dict[str, Any]:
    """A metav1.Condition that keeps its lastTransitionTime while its status holds
    (`ok` None: Unknown)."""
    status = "Unknown" if ok is None else "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status else None
    return {
        "type": ctype, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": since or now or _now(),
    }


def _region_conditions(
    region: api.Region, obs: RegionObservation, generation: int,
    previous: Sequence[Mapping[str, Any]], now: str | None,
) -> list[dict[str, Any]]:
    tiers = {t: obs.tiers.get(t, WorkloadState()) for t in api.TIERS}
    down = [t for t, s in tiers.items() if s.ready < 1]
    rolling = [t for t, s in tiers.items()
               if not s.up_to_date or s.updated < region.tiers[t].replicas]
    rollout = obs.rollout or {}
    if rollout.get("phase") not in (None, "Done") and "gateway" not in rolling:
        rolling.append("gateway")
    available: bool | None = not down and obs.error is None
    reason = R.AVAILABLE if available else R.UNAVAILABLE
    message = "every tier has a ready pod"
    if obs.error is not None:
        message = obs.error[1]
        if not obs.tiers:  # nothing could be read: the operator does not know
            available, reason = None, obs.error[0]
    elif down:
        message = f"no ready pod in: {', '.join(down)}"
        stuck = podstate.unschedulable_message(obs.pods, region)
        if stuck:
            reason, message = R.PODS_UNSCHEDULABLE, f"{message}; {stuck}"
    out = [
        condition(C.AVAILABLE, available, reason, message, generation, previous, now),
        condition(C.PROGRESSING, bool(rolling), R.ROLLING_OUT if rolling else R.UP_TO_DATE,
                  f"rolling out: {', '.join(rolling)}" if rolling else "every tier is up to date",
                  generation, previous, now),
    ]
    if obs.error is not None:
        out.append(condition(C.DEGRADED, True, obs.error[0], obs.error[1], generation,
                             previous, now))
    elif rollout.get("paused"):
        out.append(condition(C.DEGRADED, True, R.ROLLOUT_PAUSED, str(rollout["paused"]),
                             generation, previous, now))
    else:
        out.append(condition(C.DEGRADED, False, R.AS_EXPECTED, "reconciled", generation,
                             previous, now))
    return out


def _status(conditions: Sequence[Mapping[str, Any]], ctype: str) -> str:
    return next((str(c["status"]) for c in conditions if c["type"] == ctype), "Unknown")


def _is(conditions: Sequence[Mapping[str, Any]], ctype: str) -> bool:
    return _status(conditions, ctype) == "True"


def _migration_gate(storage: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why the tiers wait for the storage migration (MigrationRunning: Progressing,
    MigrationFailed: Degraded); None once it succeeded, or before any Job is known."""
    job = storage.get("migrationJob")
    if not job or storage.get("migrated"):
        return None
    if storage.get("failure"):
        return (R.MIGRATION_FAILED, f"storage migration Job {job} failed: "
                f"{storage['failure']}; every tier keeps the version it runs")
    return R.MIGRATION_RUNNING, f"the tiers wait for the storage migration Job {job}"


def region_ready(region: api.Region, obs: RegionObservation) -> bool:
    return obs.error is None and all(
        obs.tiers.get(t, WorkloadState()).ready >= region.tiers[t].replicas for t in api.TIERS
    )


def compute(
    cluster: api.ChatCluster,
    observations: Mapping[str, RegionObservation],
    previous: Mapping[str, Any] | None = None,
    now: str | None = None,
    migration: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The full `status` for `cluster`, given what was observed in each region (and the
    storage migration Job's name and outcome, when it was applied)."""
    previous = previous or {}
    old_regions = {r.get("name"): r for r in previous.get("regions") or []}
    gen = cluster.generation
    regions: list[dict[str, Any]] = []
    ready_regions = 0
    for region in cluster.regions:
        obs = observations.get(region.name) or RegionObservation(tiers={})
        conds = _region_conditions(
            region, obs, gen, old_regions.get(region.name, {}).get("conditions") or [], now)
        ready = region_ready(region, obs)
        ready_regions += ready
        regions.append({
            "name": region.name,
            "datacenter": region.datacenter,
            "ready": ready,
            "connections": obs.connections,
            "tiers": {
                t: {"replicas": region.tiers[t].replicas,
                    "readyReplicas": obs.tiers.get(t, WorkloadState()).ready,
                    "updatedReplicas": obs.tiers.get(t, WorkloadState()).updated}
                for t in api.TIERS
            },
            "conditions": conds,
            **({"rollout": dict(obs.rollout)} if obs.rollout is not None else {}),
            **({"peers": reachability.status_rows(
                [p["name"] for p in config.peers(cluster, region)], obs.peers,
                cluster.replication)}
               if obs.peers is not None and obs.peers.answered else {}),
        })
    prev = previous.get("conditions") or []
    degraded = [r for r in regions if _is(r["conditions"], C.DEGRADED)]
    unavailable = [r["name"] for r in regions if not _is(r["conditions"], C.AVAILABLE)]
    unknown = [r["name"] for r in regions if _status(r["conditions"], C.AVAILABLE) == "Unknown"]
    progressing = [r["name"] for r in regions if _is(r["conditions"], C.PROGRESSING)]
    not_ready = [r["name"] for r in regions if not r["ready"]]
    deg_msg = "; ".join(
        f"{r['name']}: " + next(c["message"] for c in r["conditions"] if c["type"] == C.DEGRADED)
        for r in degraded
    )
    deg_reason = (next(c["reason"] for c in degraded[0]["conditions"] if c["type"] == C.DEGRADED)
                  if len(degraded) == 1 else R.REGION_DEGRADED)
    storage = dict(migration) if migration is not None else dict(previous.get("storage") or {})
    gate = _migration_gate(storage)
    failed = gate is not None and gate[0] == R.MIGRATION_FAILED
    waiting = gate is not None and not failed
    ready = not not_ready and not degraded and not progressing and gate is None
    if gate is not None and failed:
        deg_reason, deg_msg = gate[0], "; ".join(m for m in (gate[1], deg_msg) if m)
    rolling = f"rolling out in: {', '.join(progressing)}" if progressing else ""
    prog = ((gate[0], "; ".join(m for m in (gate[1], rolling) if m))
            if gate is not None and waiting  # the reason the tiers cannot go on
            else (R.ROLLING_OUT, rolling) if progressing
            else (R.UP_TO_DATE, "every region is up to date"))
    not_ready_msg = (f"regions not ready: {', '.join(not_ready or progressing)}"
                     if not_ready or progressing else gate[1] if gate else "")
    # Unknown when every unavailable region is one the operator could not read
    available: bool | None = None if unknown and len(unknown) == len(unavailable) \
        else not unavailable
    conditions = [
        condition(C.AVAILABLE, available, R.AVAILABLE if not unavailable else R.UNAVAILABLE,
                  "every region serves" if not unavailable
                  else f"regions not available: {', '.join(unavailable)}", gen, prev, now),
        condition(C.PROGRESSING, bool(progressing) or waiting, prog[0], prog[1],
                  gen, prev, now),
        condition(C.DEGRADED, bool(degraded) or failed,
                  deg_reason if degraded or failed else R.AS_EXPECTED,
                  deg_msg or "every region reconciled", gen, prev, now),
        condition(C.READY, ready, R.ALL_READY if ready else R.NOT_READY,
                  "every tier of every region is ready" if ready else not_ready_msg,
                  gen, prev, now),
    ]
    conditions.append(_replication(cluster, observations, storage, gen, prev, now))
    gateways_ready = sum(r["tiers"]["gateway"]["readyReplicas"] for r in regions)
    gateways_wanted = sum(r["tiers"]["gateway"]["replicas"] for r in regions)
    out = {
        "observedGeneration": gen,
        "conditions": conditions,
        "regions": regions,
        "readyRegions": f"{ready_regions}/{len(regions)}",
        "readyGateways": f"{gateways_ready}/{gateways_wanted}",
        "connections": sum(int(r["connections"]) for r in regions),
        **(podstate.versions_status([o.pods for o in observations.values()])
           or {k: previous[k] for k in ("version", "versions") if k in previous}),
    }
    if storage:
        out["storage"] = storage
    return out


_PEER_REASONS = {reachability.UNREACHABLE: R.PEER_UNREACHABLE,
                 reachability.MISMATCH: R.PEER_MISMATCH,
                 reachability.MISSING: R.PEER_REPORT_MISSING}


def _replication(cluster: api.ChatCluster, observations: Mapping[str, RegionObservation],
                 storage: Mapping[str, Any], gen: int, prev: Sequence[Mapping[str, Any]],
                 now: str | None) -> dict[str, Any]:
    """ReplicationReady: every region was applied with its full peer list (the ConfigMap's
    CHATPLANE_PEERS), the migration Job for the current keyspace map has succeeded, every
    region's data plane reports every peer reachable (and answering as expected), and
    applies every peer's replicated log within `spec.replication` (where it replicates
    one: lags.py)."""
    def cond(ok: bool | None, reason: str, message: str) -> dict[str, Any]:
        return condition(C.REPLICATION_READY, ok, reason, message, gen, prev, now)

    unwired = [r.name for r in cluster.regions
               if r.name not in observations or observations[r.name].error is not None]
    keyspace = config.replication_map(cluster)
    if unwired:
        return cond(False, R.REGION_NOT_WIRED,
                    f"regions not given their peer list: {', '.join(unwired)}")
    if not storage.get("migrated"):
        return cond(False, R.MIGRATION_PENDING,
                    f"keyspace replication {keyspace} waits for Job "
                    f"{storage.get('migrationJob', '(not created)')}")
    applied = f"keyspace replication {keyspace} applied by Job {storage.get('migrationJob')}"
    expected = {r.name: [p["name"] for p in config.peers(cluster, r)] for r in cluster.regions}
    count = len(cluster.regions) - 1 + len(cluster.peers)
    if not count:
        return cond(True, R.REPLICATION_WIRED, f"a single region without peers; {applied}")
    views = {name: observations[name].peers for name in expected}  # all observed: wired
    if not any(v is not None and v.answered for v in views.values()):
        return cond(None, R.REPLICATION_WIRED,  # Unknown: nothing says either way yet
                    f"every region lists its {count} peer(s); {applied}; no region's data "
                    "plane reports its peers yet")
    found = reachability.problems(expected, views)
    behind = lags.problems(expected, {n: v.lags for n, v in views.items() if v is not None},
                           cluster.replication)
    if found:  # an unreachable peer first: its lag only says since when
        return cond(False, _PEER_REASONS[found[0][0]], "; ".join([m for _, m in found] + behind))
    if behind:
        return cond(False, R.REPLICATION_LAGGING, "; ".join(behind))
    reached = f"every region's data plane reaches its {count} peer(s)"
    if not any(v is not None and v.lags for v in views.values()):
        # the keyspace carries the data between datacenters: no log of ours to judge
        return cond(True, R.PEERS_REACHABLE, f"{reached}; {applied}")
    bounds = cluster.replication
    return cond(True, R.REPLICATION_IN_SYNC,
                f"{reached} and applies their logs within {bounds.max_lag_entries} entries "
                f"and {bounds.max_silence_seconds} s; {applied}")
