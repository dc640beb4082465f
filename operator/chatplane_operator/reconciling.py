"""One reconcile pass of one ChatCluster: fetch, build, apply, prune, observe, report.

Idempotent: every object is server-side applied from the pure builders, so a pass that
finds nothing to change writes nothing (resourceVersions stay put), and a deleted or edited
child is put back as specified. The generated Secret is created once and kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from chatplane_operator import (
    api,
    counting,
    drain,
    fleet_kube,
    issuing,
    podreading,
    podstate,
    status,
    tokenkeys,
)
from chatplane_operator.applying import KINDS, ApiError, Applier, secret_has_key
from chatplane_operator.specs import bundle, config, jobs, naming

log = logging.getLogger(__name__)
R = api.Reason


@dataclasses.dataclass
class Outcome:
    """What a pass did; `ok` False means retry with backoff."""

    ok: bool = True
    created: int = 0
    updated: int = 0
    deleted: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)  # "Reason: message"
    seconds: float = 0.0
    found: bool = True
    rolling: bool = False  # a gateway rollout is under way: come back soon, not at resync
    certificates: dict[str, str] | None = None  # status.certificates (own CA only)
    status: dict[str, Any] | None = None  # the status the pass computed


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _complete(obj: dict[str, Any] | None, config_hash: str) -> bool:
    """`obj` (a Deployment or StatefulSet as listed) runs the template with `config_hash`
    on every replica, all ready."""
    if obj is None:
        return False
    notes = obj["spec"]["template"]["metadata"].get("annotations") or {}
    st = obj.get("status") or {}
    want = int(obj["spec"].get("replicas", 1))
    return (notes.get(naming.CONFIG_HASH) == config_hash
            and int(st.get("observedGeneration") or 0) >= int(obj["metadata"]["generation"])
            and int(st.get("updatedReplicas") or 0) == want
            and int(st.get("readyReplicas") or 0) == want)


def rolled_out(existing: dict[tuple[str, str], dict[str, Any]], cluster: api.ChatCluster) -> bool:
    """Every pod of every region runs `cluster`'s configuration (config hash)."""
    for region in cluster.regions:
        digest = config.config_hash(cluster, region)
        for tier in api.TIERS:
            kind = "StatefulSet" if tier == "gateway" else "Deployment"
            if not _complete(existing.get((kind, naming.tier_name(cluster, region, tier))),
                             digest):
                return False
    return True


def _missing_refs(applier: Applier, cluster: api.ChatCluster, region: api.Region,
                  cache: dict[str, dict[str, Any] | None]) -> tuple[str, str] | None:
    """(reason, message) for the first Secret key this region needs and cannot find."""
    for ref in config.user_secret_refs(cluster, region):
        if ref.name not in cache:
            cache[ref.name] = applier.get("Secret", cluster.namespace, ref.name)
        secret = cache[ref.name]
        if secret is None:
            return R.SECRET_NOT_FOUND, f"Secret {cluster.namespace}/{ref.name} not found"
        if not secret_has_key(secret, ref.key):
            return (R.SECRET_KEY_NOT_FOUND,
                    f"Secret {cluster.namespace}/{ref.name} has no key {ref.key!r}")
    return None


_WORKLOADS = ("Deployment", "StatefulSet")


@dataclasses.dataclass
class _Applied:
    """One region after the apply phase of a pass, before its data plane is read."""

    region: api.Region
    tiers: dict[str, status.WorkloadState]
    gateway: dict[str, Any] | None  # the applied StatefulSet (None: not applied)
    error: tuple[str, str] | None


class Reconciler:
    """Runs passes; holds the API client and the reader of the data plane (connection
    counts and peer reports, read once per pod per pass), nothing per cluster."""

    def __init__(self, applier: Applier, read: podreading.Reader | None = None,
                 admin: drain.GatewayAdmin | None = None) -> None:
        self.applier = applier
        self.read = read or podreading.HttpReader(applier)
        self.admin = admin or drain.GatewayAdmin()
        self.issuer = issuing.Issuer(applier)
        self._last_errors: dict[tuple[str, str], set[str]] = {}
        self._last_stuck: dict[tuple[str, str, str], str] = {}  # unschedulable, per region

    def _event(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            self.applier.event(body, kind, reason, message)
        except ApiError as exc:  # events are best effort
            log.warning("cannot post event %s: %s", reason, exc)

    def _existing(self, cluster: api.ChatCluster) -> dict[tuple[str, str], dict[str, Any]]:
        selector = (f"{naming.CLUSTER_LABEL}={cluster.name},"
                    f"app.kubernetes.io/managed-by={naming.MANAGED_BY}")
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in bundle.applied_kinds(cluster):
            for obj in self.applier.list(kind, cluster.namespace, selector):
                owners = obj.get("metadata", {}).get("ownerReferences") or []
                if any(o.get("uid") == cluster.uid for o in owners):
                    obj["kind"] = kind
                    out[_key(obj)] = obj
        return out

    def _ensure_generated_secret(self, body: dict[str, Any], cluster: api.ChatCluster,
                                 outcome: Outcome) -> None:
        if self.applier.create_if_absent(config.build_generated_secret(cluster)):
            outcome.created += 1
            self._event(body, "Normal", R.SECRET_GENERATED,
                        f"generated Secret {naming.generated_secret_name(cluster)}")

    def reconcile(self, namespace: str, name: str) -> Outcome:
        """One full pass for the ChatCluster `namespace/name`."""
        started = time.monotonic()
        outcome = Outcome()
        body = self.applier.get(api.KIND, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            outcome.found = False
            return outcome
        cluster = api.parse(body)
        observations: dict[str, status.RegionObservation] = {}
        migration: dict[str, Any] | None = None
        try:
            api.validate(cluster)
        except api.SpecError as exc:
            outcome.ok = False
            outcome.errors.append(f"{R.INVALID_SPEC}: {exc}")
            err = (R.INVALID_SPEC, str(exc))
            observations = {r.name: status.RegionObservation({}, error=err)
                            for r in cluster.regions}
        else:
            try:
                migration = self._apply_all(body, cluster, observations, outcome)
            except ApiError as exc:  # the API failed mid-pass: say so, then retry later
                outcome.ok = False
                outcome.errors.append(f"{R.APPLY_FAILED}: {exc}")
                for region in cluster.regions:
                    if region.name not in observations:
                        observations[region.name] = status.RegionObservation(
                            {}, error=(R.APPLY_FAILED, str(exc)))
        new_status = status.compute(cluster, observations, body.get("status"),
                                    migration=migration)
        if outcome.certificates is not None:
            new_status["certificates"] = outcome.certificates
        outcome.status = new_status
        if new_status != (body.get("status") or {}):
            self.applier.patch_status(namespace, name, new_status)
        self._report(body, cluster, outcome)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _apply_all(self, body: dict[str, Any], cluster: api.ChatCluster,
                   observations: dict[str, status.RegionObservation], outcome: Outcome,
                   ) -> dict[str, Any] | None:
        """Apply every region, then the cluster-wide objects; prune; return the migration
        status (None when the first region could not be applied)."""
        self._ensure_generated_secret(body, cluster, outcome)
        existing = self._existing(cluster)
        kids, changed = tokenkeys.ensure(self.applier, cluster,
                                         lambda c: rolled_out(existing, c), time.time())
        cluster = dataclasses.replace(cluster, token_kids=kids)
        if changed:
            self._event(body, "Normal", R.TOKEN_KEYS_ROTATED, changed)
        issued = self.issuer.ensure(cluster)
        outcome.certificates = issued.status()
        if issued.done:
            outcome.updated += len(issued.done)
            self._event(body, "Normal", R.CERTIFICATE_ISSUED, "; ".join(issued.done))
        desired: set[tuple[str, str]] = set()
        secrets: dict[str, dict[str, Any] | None] = {}
        # The tiers wait for the migration Job of this spec (see specs/jobs.py).
        hold = not jobs.migrated(existing.get(("Job", jobs.migrate_job_name(cluster))))
        done = [self._apply_one(cluster, region, existing, desired, secrets, outcome, hold)
                for region in cluster.regions]
        # Every applied region's pods in one batch, under one deadline for the pass.
        reads = self.read(cluster, [d.region for d in done if d.error is None])
        pods = self._pods(body, cluster)
        for d in done:
            got = reads.get(d.region.name) if d.error is None else None
            rollout = None
            if got is not None and d.gateway is not None:
                rollout = self._roll(body, cluster, d.region, d.gateway, got, outcome)
            observations[d.region.name] = status.RegionObservation(
                d.tiers, got.total if got else 0, d.error, rollout, got.peers if got else None,
                pods.get(d.region.name) if pods is not None else None)
        migration = self._apply_cluster_wide(cluster, existing, desired, observations, outcome)
        for key in set(existing) - desired:
            self.applier.delete(key[0], cluster.namespace, key[1])
            outcome.deleted += 1
        return migration

    def _pods(self, body: dict[str, Any], cluster: api.ChatCluster,
              ) -> dict[str, podstate.RegionPods] | None:
        """The cluster's pods per region (one list per pass); a Warning Event when pods of
        a region newly cannot be scheduled. None when they cannot be listed."""
        try:
            listed = self.applier.list("Pod", cluster.namespace,
                                       f"{naming.CLUSTER_LABEL}={cluster.name}")
        except ApiError as exc:
            log.warning("cannot list the pods of %s: %s", cluster.name, exc)
            return None
        out = podstate.by_region(listed, cluster.regions)
        key = (cluster.namespace, cluster.name)
        for region in cluster.regions:
            message = podstate.unschedulable_message(out[region.name], region)
            if message and message != self._last_stuck.get((*key, region.name)):
                self._event(body, "Warning", R.PODS_UNSCHEDULABLE,
                            f"region {region.name}: {message}")
            self._last_stuck[(*key, region.name)] = message
        return out

    def _apply_one(self, cluster: api.ChatCluster, region: api.Region,
                   existing: dict[tuple[str, str], dict[str, Any]],
                   desired: set[tuple[str, str]], secrets: dict[str, dict[str, Any] | None],
                   outcome: Outcome, hold: bool) -> _Applied:
        """Apply one region's objects (unless a Secret it needs is missing); `hold`: the
        workloads wait for the migration."""
        manifests = bundle.build_region(cluster, region)
        desired.update(_key(m) for m in manifests)
        error = _missing_refs(self.applier, cluster, region, secrets)
        applied: dict[str, dict[str, Any]] = {}
        if error is None:
            error = self._apply_region(manifests, existing, applied, outcome, hold)
        if error is not None:
            outcome.ok = False
            outcome.errors.append(f"{error[0]}: region {region.name}: {error[1]}")
        tiers = {
            tier: status.WorkloadState.from_object(
                applied.get(tier) or existing.get(
                    ("StatefulSet" if tier == "gateway" else "Deployment",
                     naming.tier_name(cluster, region, tier))))
            for tier in api.TIERS
        }
        return _Applied(region, tiers, applied.get("gateway"), error)

    def _roll(self, body: dict[str, Any], cluster: api.ChatCluster, region: api.Region,
              sts: dict[str, Any], reads: podreading.RegionReads,
              outcome: Outcome) -> dict[str, Any] | None:
        """One drain-rollout step for the region's gateways; its status (None: no pods)."""
        notes = sts["spec"]["template"]["metadata"].get("annotations") or {}
        revision = str(notes.get(naming.REVISION, ""))
        rolled = fleet_kube.step_region(self.applier, cluster, region, revision, self.admin,
                                        reads, counting.admin_access(self.applier, cluster))
        if rolled is None or not rolled.progress.total:
            return None
        for reason, message in rolled.events:
            self._event(body, "Normal", reason, f"region {region.name}: {message}")
        if rolled.step.action not in ("done", "pause"):
            outcome.rolling = True
        return rolled.status(cluster.image.version)

    def _apply_cluster_wide(self, cluster: api.ChatCluster,
                            existing: dict[tuple[str, str], dict[str, Any]],
                            desired: set[tuple[str, str]],
                            observations: dict[str, status.RegionObservation],
                            outcome: Outcome) -> dict[str, Any] | None:
        manifests = bundle.build_cluster(cluster)
        desired.update(_key(m) for m in manifests)
        first = cluster.regions[0].name if cluster.regions else None
        if first is None or observations[first].error is not None:
            return None  # the Job reads the first region's ConfigMap and Secrets
        applied: dict[str, dict[str, Any]] = {}
        error = self._apply_region(manifests, existing, applied, outcome)
        if error is not None:
            outcome.ok = False
            outcome.errors.append(f"{error[0]}: cluster: {error[1]}")
            observations[first] = dataclasses.replace(observations[first], error=error)
            return None
        job = applied.get(jobs.COMPONENT)
        out: dict[str, Any] = {"migrationJob": jobs.migrate_job_name(cluster),
                               "migrated": jobs.migrated(job)}
        failed = jobs.failure(job)
        if failed is not None:  # a Warning Event, not a retry: the Job will not run again
            out["failure"] = f"{failed[0]}: {failed[1]}"
            outcome.errors.append(f"{R.MIGRATION_FAILED}: Job {out['migrationJob']}: "
                                  f"{out['failure']}")
        return out

    def _apply_region(self, manifests: list[dict[str, Any]],
                      existing: dict[tuple[str, str], dict[str, Any]],
                      applied: dict[str, dict[str, Any]], outcome: Outcome,
                      hold: bool = False) -> tuple[str, str] | None:
        for manifest in manifests:
            before = existing.get(_key(manifest))
            if hold and manifest["kind"] in _WORKLOADS:
                if before is not None:  # keeps the template it runs until the Job succeeds
                    applied[manifest["metadata"]["labels"]["app.kubernetes.io/component"]] = before
                    continue
                manifest = jobs.gated(manifest)
            try:
                after = self.applier.apply(manifest)
            except ApiError as exc:
                return R.APPLY_FAILED, f"apply {manifest['kind']}/{manifest['metadata']['name']}: {exc}"
            if before is None:
                outcome.created += 1
            elif before["metadata"]["resourceVersion"] != after["metadata"]["resourceVersion"]:
                outcome.updated += 1
            component = manifest["metadata"]["labels"].get("app.kubernetes.io/component", "")
            if manifest["kind"] in ("Deployment", "StatefulSet", "Job"):
                applied[component] = after
        return None

    def _report(self, body: dict[str, Any], cluster: api.ChatCluster, outcome: Outcome) -> None:
        """Events: one per pass that changed something, one per new or cleared failure."""
        key = (cluster.namespace, cluster.name)
        if outcome.created or outcome.updated or outcome.deleted:
            self._event(body, "Normal", R.APPLIED,
                        f"created {outcome.created}, updated {outcome.updated}, "
                        f"deleted {outcome.deleted} objects (generation {cluster.generation})")
        errors = set(outcome.errors)
        before = self._last_errors.get(key, set())
        for error in sorted(errors - before):
            reason, _, message = error.partition(": ")
            self._event(body, "Warning", reason, message)
        if before and not errors:
            self._event(body, "Normal", R.RECOVERED, "every region reconciled again")
        self._last_errors[key] = errors

    def forget(self, namespace: str, name: str) -> None:
        self._last_errors.pop((namespace, name), None)
        for key in [k for k in self._last_stuck if k[:2] == (namespace, name)]:
            del self._last_stuck[key]


__all__ = ["KINDS", "Outcome", "Reconciler"]
