"""The one ChatCluster the node tests share (`chat_cluster` in conftest.py), made once per
session as a platform team would: `kubectl apply` a one-region ChatCluster with 3 gateways
behind a NodePort Service on a node that lacks the region label (the status must say why the
pods are Pending), the advertised endpoints set to the NodePorts, then the label set and the
wait for `Ready`.

Paid once: the migration Job against a fresh keyspace and a dozen pod starts take minutes on
this 2-core machine. test_node_chatcluster.py asserts what the setup saw (the Pending
reason, the time to Ready, the migration gating the im tier) and chats through the Services;
test_node_rollout.py then rolls the same cluster under traffic.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatplane.auth import TokenSigner
from tests.node.kube_node import NODE_IP, Kubectl

NAMESPACE = "chat"
REGION_LABEL = "topology.kubernetes.io/region"
REPOSITORY = "ghcr.io/chatplane/chatplane"
BUILT = "0.1.0"
GATEWAYS = 3
GATEWAY = "app.kubernetes.io/component=gateway"
# The drain rate of every drain (the rollout's, a preStop's); the size is 3,000
# clients at 100/s (CHATPLANE_NODE_ROLLOUT_CLIENTS, _RATE).
RATE = int(os.environ.get("CHATPLANE_NODE_ROLLOUT_RATE", "50"))
READY_TIMEOUT_S = 420.0


def manifest(redis_secret: str, cql: str, advertise: str = "", advertise_tcp: str = "") -> str:
    gateway = "{expose: {type: NodePort}"
    if advertise:
        gateway += f', advertiseURL: "{advertise}", advertiseTCP: "{advertise_tcp}"'
    gateway += "}"
    return f"""
apiVersion: chatplane.dev/v1alpha1
kind: ChatCluster
metadata: {{name: chat, namespace: {NAMESPACE}}}
spec:
  image: {{repository: {REPOSITORY}, version: "{BUILT}", pullPolicy: Never}}
  storage: {{keyspace: chatplane, consistency: LOCAL_ONE}}
  upgrade: {{drainRate: {RATE}, drainDeadlineSeconds: 60, maxUnavailable: 1}}
  regions:
    - name: eu
      datacenter: datacenter1
      tiers:
        gateway: {{replicas: {GATEWAYS}}}
      gateway: {gateway}
      redis:
        urlSecretRef: {{name: {redis_secret}, key: url}}
      cql:
        hosts: ["{cql}"]
        replicationFactor: 1
"""


@dataclass
class Deployed:
    """The cluster as its users reach it, and what its setup saw."""

    node: Kubectl
    dispatch_url: str  # ipconf's ClusterIP (kube-proxy makes it reachable from the node)
    public_ws: str  # wss://NODE_IP:<http NodePort>/ws
    public_tcp: str  # tcps://NODE_IP:<tcp NodePort>
    signer: TokenSigner
    ca: str  # the cluster CA's file
    unschedulable: str  # the region's Available message while the node lacked the label
    unschedulable_events: list[dict[str, Any]] = field(default_factory=list)
    ready_s: float = 0.0  # node labelled to Ready


def cluster_status(node: Kubectl) -> dict[str, Any]:
    return dict(node.get("chatcluster", "chat", "-n", NAMESPACE).get("status", {}))


def _unschedulable(node: Kubectl) -> str:
    """The region's Available message while it says PodsUnschedulable, else ''."""
    regions = cluster_status(node).get("regions") or [{}]
    available: dict[str, Any] = next((c for c in regions[0].get("conditions") or []
                                      if c["type"] == "Available"), {})
    return str(available.get("message", "")) if available.get(
        "reason") == "PodsUnschedulable" else ""


def _ready_status(node: Kubectl) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in cluster_status(node).get("conditions", []))


def diagnose(node: Kubectl) -> str:
    """What the pods, the events and a gateway's log say (for a failed wait)."""
    out = [node.run("get", "pods", "-n", NAMESPACE, "-o", "wide")]
    out.append(node.run("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"))
    for args in (("--previous",), ()):
        with contextlib.suppress(RuntimeError):
            out.append(node.run("logs", "-n", NAMESPACE, "chat-eu-gateway-0", "--tail=30",
                                *args))
    # the im pods too: a gateway's login or send that times out waits on one of them
    with contextlib.suppress(RuntimeError):
        for pod in node.get("pods", "-n", NAMESPACE, "-l",
                            "app.kubernetes.io/component=im")["items"]:
            name = pod["metadata"]["name"]
            out.append(f"--- {name}\n" + node.run("logs", "-n", NAMESPACE, name, "--tail=40"))
    return "\n".join(out)[-24000:]


def dispatch(base_url: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{base_url}/v1/dispatch?uid=alice", timeout=5) as reply:
        return list(json.load(reply)["endpoints"])


def dispatch_ws(base_url: str) -> list[str]:
    """[] while no gateway is published: ipconf answers 503 then."""
    try:
        return [e["ws"] for e in dispatch(base_url)]
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            raise
        return []


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def gateways(node: Kubectl) -> list[dict[str, Any]]:
    return list(node.get("pods", "-n", NAMESPACE, "-l", GATEWAY)["items"])


def _until(what: str, timeout_s: float, check: Any, node: Kubectl, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not in {timeout_s:.0f}s:\n{diagnose(node)}")
        time.sleep(every_s)
    return found


@contextlib.contextmanager
def deployed(node: Kubectl, redis_url: str, cql: str, workdir: Path) -> Iterator[Deployed]:
    # The operator places each region's pods by topology.kubernetes.io/region; a cloud sets
    # that label, this node does not (yet: the status must say so first).
    node.run("label", "node", "chatplane-node", f"{REGION_LABEL}-")
    _until(f"namespace {NAMESPACE} gone", 180, lambda: f"namespace/{NAMESPACE}" not in
           node.run("get", "namespaces", "-o", "name").split(), node)
    node.run("create", "namespace", NAMESPACE)
    try:
        node.run("create", "secret", "generic", "redis-eu", "-n", NAMESPACE,
                 f"--from-literal=url={redis_url}")
        node.apply(manifest("redis-eu", cql))

        def public_service() -> dict[str, Any]:
            with contextlib.suppress(RuntimeError):
                return node.get("service", "chat-eu-gateway-public", "-n", NAMESPACE)
            return {}

        # The advertised endpoints name the NodePorts, known once the Service exists: set
        # while the pods are Pending. (The gateways still roll once for it, empty, before
        # any client: the operator changes their template only after the migration, and the
        # first pods were made before.) TLS is on by default: the
        # gateways serve WSS and TCP+TLS with a certificate from the cluster's CA that
        # carries both advertised hosts (an IP here, so an IP SAN).
        service = _until("the public gateway Service", 120, public_service, node)
        ports = {p["name"]: p["nodePort"] for p in service["spec"]["ports"]}
        public_ws = f"wss://{NODE_IP}:{ports['http']}/ws"
        tcp = f"{NODE_IP}:{ports['tcp']}"
        node.apply(manifest("redis-eu", cql, public_ws, tcp))

        stuck = _until("PodsUnschedulable in status", 120, lambda: _unschedulable(node), node)
        events = node.get("events", "-n", NAMESPACE, "--field-selector",
                          "reason=PodsUnschedulable")["items"]
        started = time.monotonic()
        node.run("label", "node", "chatplane-node", f"{REGION_LABEL}=eu", "--overwrite")
        _until("Ready in status", READY_TIMEOUT_S, lambda: _ready_status(node), node, 1.0)
        ready_s = time.monotonic() - started
        ipconf = node.get("service", "chat-eu-ipconf", "-n", NAMESPACE)["spec"]["clusterIP"]
        dispatch_url = f"http://{ipconf}:8080"

        def serving() -> bool:
            pods = gateways(node)
            return (len(pods) == GATEWAYS and all(pod_ready(p) for p in pods)
                    and dispatch_ws(dispatch_url) == [public_ws] * GATEWAYS)

        _until(f"{GATEWAYS} gateways serving the public URL", READY_TIMEOUT_S, serving, node)
        secret = node.get("secret", "chat-generated", "-n", NAMESPACE)
        ca = workdir / "ca.crt"
        ca.write_bytes(base64.b64decode(
            node.get("secret", "chat-ca", "-n", NAMESPACE)["data"]["ca.crt"]))
        yield Deployed(node, dispatch_url, public_ws, f"tcps://{tcp}",
                       TokenSigner(base64.b64decode(secret["data"]["token"]).decode()),
                       str(ca), stuck, events, ready_s)
    finally:
        node.run("delete", "namespace", NAMESPACE, "--wait=false")
