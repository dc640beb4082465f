"""The pod template every tier shares: security, probes, topology spread, env, drain hooks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from chatplane_operator import api
from chatplane_operator.specs import certs, config, naming

RUN_AS = 10001
DRAIN_MARGIN_S = 15  # beyond the drain deadline, for the process to flush and exit
DEFAULT_GRACE_S = 30


def grace_period(cluster: api.ChatCluster, tier: str) -> int:
    """Gateways get the drain deadline plus a margin; other tiers the Kubernetes default."""
    if tier == "gateway":
        return cluster.upgrade.drain_deadline_seconds + DRAIN_MARGIN_S
    return DEFAULT_GRACE_S


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_basics(cluster: api.ChatCluster, region: api.Region) -> dict[str, Any]:
    """What every chatplane pod spec has: identity, security, /tmp, placement, pull secrets."""
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    if region.placement.region_label:
        spec["nodeSelector"] = {region.placement.region_label: region.placement.region_value}
    if cluster.image.pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in cluster.image.pull_secrets]
    return spec


def _ports(cluster: api.ChatCluster, tier: str) -> list[dict[str, Any]]:
    ports = [{"name": "http", "containerPort": cluster.ports.http, "protocol": "TCP"}]
    if tier == "gateway":
        ports.append({"name": "tcp", "containerPort": cluster.ports.tcp, "protocol": "TCP"})
    if tier in ("state", "im"):
        ports.append({"name": "grpc", "containerPort": cluster.ports.grpc, "protocol": "TCP"})
    # admin API, /metrics, /admin/drain: reached by pod IP, never through the public Service
    ports.append({"name": "admin", "containerPort": cluster.ports.admin, "protocol": "TCP"})
    return ports


def _probe(path: str, period: int, failures: int, https: bool = False,
           timeout: int = 2) -> dict[str, Any]:
    get: dict[str, Any] = {"path": path, "port": "http"}
    if https:  # the gateway's client port speaks TLS (the kubelet does not verify it)
        get["scheme"] = "HTTPS"
    return {
        "httpGet": get,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _advertise_url(cluster: api.ChatCluster, region: api.Region) -> str:
    if region.gateway.advertise_url:
        return region.gateway.advertise_url
    headless = naming.tier_name(cluster, region, "gateway")
    scheme = "wss" if cluster.tls.enabled else "ws"
    return f"{scheme}://$(POD_NAME).{headless}.{cluster.namespace}.svc:{cluster.ports.http}/ws"


def _advertise_tcp(cluster: api.ChatCluster, region: api.Region) -> str:
    if region.gateway.advertise_tcp:
        return region.gateway.advertise_tcp
    headless = naming.tier_name(cluster, region, "gateway")
    return f"$(POD_NAME).{headless}.{cluster.namespace}.svc:{cluster.ports.tcp}"


def _env(cluster: api.ChatCluster, region: api.Region, tier: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # Each instance is named after its pod; peers dial it at the pod IP.
        {"name": "CHATPLANE_SERVER_ID", "value": "$(POD_NAME)"},
        {"name": "CHATPLANE_GRPC_ADVERTISE_HOST", "value": "$(POD_IP)"},
    ]
    if tier == "gateway":
        env.append({"name": "CHATPLANE_GATEWAY_ADVERTISE_URL",
                    "value": _advertise_url(cluster, region)})
        env.append({"name": "CHATPLANE_GATEWAY_ADVERTISE_TCP",
                    "value": _advertise_tcp(cluster, region)})
        # A drained gateway waits for the kubelet's SIGTERM: exiting by itself would kill
        # the preStop hook still running in it (FailedPreStopHook), and the container would
        # be restarted in place, serving again, before the operator deletes its pod.
        env.append({"name": "CHATPLANE_DRAIN_EXIT_WHEN_EMPTY", "value": "0"})
    return (env + config.secret_env(cluster, region)
            + certs.env(certs.mounts(cluster, region, tier)))


def _resources(tier: api.Tier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if tier.resources.requests:
        out["requests"] = dict(tier.resources.requests)
    if tier.resources.limits:
        out["limits"] = dict(tier.resources.limits)
    return out


def container(cluster: api.ChatCluster, region: api.Region, tier: str) -> dict[str, Any]:
    https = tier == "gateway" and cluster.tls.enabled
    out: dict[str, Any] = {
        "name": tier,
        "image": cluster.image.reference,
        "imagePullPolicy": cluster.image.pull_policy,
        "args": [tier],
        "ports": _ports(cluster, tier),
        "envFrom": [{"configMapRef": {"name": naming.config_name(cluster, region)}}],
        "env": _env(cluster, region, tier),
        "resources": _resources(region.tiers[tier]),
        # Lenient where a failure restarts the container: on a saturated node (a 3,000-client
        # rollout on 2 cores) an im answered /healthz in over 2 s and was killed, and its
        # replacement, slower still, missed a 60 s start: restarts that add load to a node
        # that has too much. Readiness stays strict: it only takes the pod out of traffic.
        "startupProbe": _probe("/healthz", 2, 90, https),
        "livenessProbe": _probe("/healthz", 10, 3, https, timeout=5),
        "readinessProbe": _probe("/readyz", 5, 2, https),
        "securityContext": container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         *certs.volume_mounts(certs.mounts(cluster, region, tier))],
    }
    if tier == "gateway":
        # CHATPLANE_ADMIN_SECRET is in the env: the drain call carries it
        # stdlib only (chatplane.drainhook): `chatplane drain` would load the whole CLI
        drain = ["python3", "-m", "chatplane.drainhook", "--url",
                 f"http://127.0.0.1:{cluster.ports.admin}", "--wait"]
        out["lifecycle"] = {"preStop": {"exec": {"command": drain}}}
    return out


def _spread(cluster: api.ChatCluster, region: api.Region, tier: str) -> list[dict[str, Any]]:
    select = {"matchLabels": naming.selector(cluster, region, tier)}
    keys = [region.placement.zone_label, "kubernetes.io/hostname"]
    return [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": select}
        for key in keys if key
    ]


def pod_template(cluster: api.ChatCluster, region: api.Region, tier: str) -> dict[str, Any]:
    annotations = {naming.CONFIG_HASH: config.config_hash(cluster, region)}
    if cluster.observability.metrics:
        annotations.update({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(cluster.ports.admin),
            "prometheus.io/path": "/metrics",
        })
    basics = pod_basics(cluster, region)
    basics["volumes"] += certs.volumes(certs.mounts(cluster, region, tier))
    spec: dict[str, Any] = {
        **basics,
        "terminationGracePeriodSeconds": grace_period(cluster, tier),
        "containers": [container(cluster, region, tier)],
        "topologySpreadConstraints": _spread(cluster, region, tier),
    }
    template = {
        "metadata": {"labels": naming.labels(cluster, region, tier), "annotations": annotations},
        "spec": spec,
    }
    if tier == "gateway":  # OnDelete: the drain rollout replaces pods of an older revision
        annotations[naming.REVISION] = revision(cluster, template)
    return template


def revision(cluster: api.ChatCluster, template: dict[str, Any]) -> str:
    """`<version>-<digest of the pod template>`: what a gateway pod runs."""
    blob = json.dumps(template, sort_keys=True)
    return f"{cluster.image.version}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
