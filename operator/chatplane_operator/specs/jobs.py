"""The storage migration Job: `chatplane storage migrate` creates or migrates the keyspace.

One Job per cluster, run from the first region with that region's CQL settings. Its name
carries a digest of what it migrates to (image version, keyspace, replication map), so a new
version or a changed replication factor yields a new Job (Job templates are immutable) and
the reconciler prunes the old one. No TTL: a Job deleted by a TTL would be re-created, and
the migration re-run, by the next pass.

The Job gates the tiers: until it has succeeded, the reconciler leaves every existing
workload at the template it runs and creates the tiers that read the schema
(`SCHEMA_TIERS`) with no replicas (`gated()`), so no pod of a new version serves on a schema
that was not migrated for it. A Job that failed for good (its `Failed` condition) is
`failure()`: the cluster turns Degraded with the Job's reason and message.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import certs, config, naming, pods

COMPONENT = "migrate"
# The tiers that open the CQL keyspace (and refuse one whose schema is behind).
SCHEMA_TIERS: frozenset[str] = frozenset({"im"})


def migrate_job_name(cluster: api.ChatCluster) -> str:
    what = [cluster.image.version, cluster.storage.keyspace, config.replication_map(cluster)]
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
    return f"{cluster.name}-migrate-{digest}"


def build_migrate_job(cluster: api.ChatCluster) -> dict[str, Any]:
    region = cluster.regions[0]
    creds = cluster.storage.credentials
    env: list[dict[str, Any]] = []
    if creds is not None:
        env = [
            {"name": "CHATPLANE_CQL_USERNAME", "valueFrom": {"secretKeyRef": {
                "name": creds.name, "key": creds.username_key}}},
            {"name": "CHATPLANE_CQL_PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": creds.name, "key": creds.password_key}}},
        ]
    cql_tls = [m for m in certs.store_mounts(cluster) if m.volume == "tls-cql"]
    env += certs.env(cql_tls)
    container: dict[str, Any] = {
        "name": COMPONENT,
        "image": cluster.image.reference,
        "imagePullPolicy": cluster.image.pull_policy,
        "args": ["storage", "migrate"],
        "envFrom": [{"configMapRef": {"name": naming.config_name(cluster, region)}}],
        "securityContext": pods.container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *certs.volume_mounts(cql_tls)],
    }
    if env:
        container["env"] = env
    basics = pods.pod_basics(cluster, region)
    basics["volumes"] += certs.volumes(cql_tls)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": naming.metadata(cluster, migrate_job_name(cluster), None, COMPONENT),
        "spec": {
            "backoffLimit": 6,
            "activeDeadlineSeconds": 900,
            "template": {
                "metadata": {"labels": naming.labels(cluster, None, COMPONENT)},
                "spec": {
                    **basics,
                    "restartPolicy": "OnFailure",
                    "containers": [container],
                },
            },
        },
    }


def migrated(job: dict[str, Any] | None) -> bool:
    return bool(job and int((job.get("status") or {}).get("succeeded") or 0) >= 1)


def failure(job: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) of a Job that failed for good (BackoffLimitExceeded,
    DeadlineExceeded, ...); None while it runs, succeeded, or does not exist."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return (str(cond.get("reason") or "Failed"),
                    str(cond.get("message") or "the Job failed"))
    return None


def gated(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` (a workload to be created while the migration has not succeeded) as it
    may be created: a tier of `SCHEMA_TIERS` with 0 replicas, any other unchanged."""
    component = manifest["metadata"]["labels"].get("app.kubernetes.io/component")
    if component not in SCHEMA_TIERS:
        return manifest
    return {**manifest, "spec": {**manifest["spec"], "replicas": 0}}
