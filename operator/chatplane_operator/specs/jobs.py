"""The storage migration Job: `chatplane storage migrate` creates or migrates the keyspace.

One Job per cluster, run from the first region with that region's CQL settings. Its name
carries a digest of what it migrates to (image version, keyspace, replication map), so a new
version or a changed replication factor yields a new Job (Job templates are immutable) and
the reconciler prunes the old one. No TTL: a Job deleted by a TTL would be re-created, and
the migration re-run, by the next pass.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import certs, config, naming, pods

COMPONENT = "migrate"


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
