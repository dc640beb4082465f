"""As a platform team would, on real pods: `helm install` the chart (the operator runs from
the image built here), `kubectl apply` a one-region ChatCluster, wait for Ready in its
status, then reach ipconf through a port-forward and the gateway through its public NodePort
Service, and chat through the SDK: every message arrives exactly once, in order.

Redis and Cassandra are host processes the pods reach (tests/node/host_services.py).

The node starts without the region label the pods select: the status must say why they are
Pending (PodsUnschedulable, with the label to set) before the test sets it. The time from
then to Ready is printed for docs/kubernetes-node.md; the storage migration gates the im
tier, so no im pod crash-loops on an unmigrated keyspace, and `status.version` is what the
Ready pods run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth import TokenSigner
from tests.node.kube_node import NODE_IP, Kubectl
from tests.node.test_node_up_pod import _chat_exactly_once

pytestmark = [pytest.mark.node, pytest.mark.slow]

NAMESPACE = "chat"
READY_TIMEOUT_S = 300.0
REGION_LABEL = "topology.kubernetes.io/region"


def _cluster(redis_secret: str, cql: str) -> str:
    return f"""
apiVersion: chatplane.dev/v1alpha1
kind: ChatCluster
metadata: {{name: chat, namespace: {NAMESPACE}}}
spec:
  image: {{repository: ghcr.io/chatplane/chatplane, version: "0.1.0"}}
  storage: {{keyspace: chatplane, consistency: LOCAL_ONE}}
  regions:
    - name: eu
      datacenter: datacenter1
      tiers:
        gateway: {{replicas: 1}}
      gateway:
        expose: {{type: NodePort}}
      redis:
        urlSecretRef: {{name: {redis_secret}, key: url}}
      cql:
        hosts: ["{cql}"]
        replicationFactor: 1
"""


def _unschedulable(node: Kubectl) -> str:
    """The region's Available message while it says PodsUnschedulable, else ''."""
    regions = node.get("chatcluster", "chat", "-n", NAMESPACE).get("status", {}).get(
        "regions") or [{}]
    available: dict[str, Any] = next((c for c in regions[0].get("conditions") or []
                      if c["type"] == "Available"), {})
    return str(available.get("message", "")) if available.get(
        "reason") == "PodsUnschedulable" else ""


def _diagnose(node: Kubectl) -> str:
    """What the pods, the events and the gateway's log say (for a failed wait)."""
    out = [node.run("get", "pods", "-n", NAMESPACE, "-o", "wide")]
    out.append(node.run("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"))
    for args in (("--previous",), ()):
        with contextlib.suppress(RuntimeError):
            out.append(node.run("logs", "-n", NAMESPACE, "chat-eu-gateway-0", "--tail=30",
                                *args))
    return "\n".join(out)[-12000:]


def _degraded(node: Kubectl) -> list[str]:
    """The cluster's Degraded condition (reason: message) while it is True."""
    conditions = node.get("chatcluster", "chat", "-n", NAMESPACE).get("status", {}).get(
        "conditions", [])
    return [f"{c['reason']}: {c['message']}" for c in conditions
            if c["type"] == "Degraded" and c["status"] == "True"]


def _ready_status(node: Kubectl) -> bool:
    conditions = node.get("chatcluster", "chat", "-n", NAMESPACE).get("status", {}).get(
        "conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@contextlib.contextmanager
def _port_forward(node: Kubectl, target: str) -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={node.kubeconfig}", "port-forward",
                             "-n", NAMESPACE, target, f"{port}:8080"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "Forwarding" in line, line
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _dispatch(base_url: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{base_url}/v1/dispatch?uid=alice", timeout=5) as reply:
        return list(json.load(reply)["endpoints"])


def _dispatch_ws(base_url: str) -> list[str]:
    """[] while no gateway is published: ipconf answers 503 then, as while the only gateway
    rolls (it unregisters when it stops, and the new pod registers once it is ready)."""
    try:
        return [e["ws"] for e in _dispatch(base_url)]
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            raise
        return []


# node up, Cassandra's start, helm, the migration against a fresh keyspace and the roll of
# the lone gateway on a shared 2-core machine: more than the suite's 300 s default
@pytest.mark.timeout(600)
async def test_helm_install_apply_ready_and_chat(node: Kubectl, backing: tuple[str, str],
                                                 operator_release: None, tmp_path: Path) -> None:
    redis_url, cql = backing
    # The operator places each region's pods by topology.kubernetes.io/region; a cloud sets
    # that label, this node does not (yet: the status must say so first).
    node.run("label", "node", "chatplane-node", f"{REGION_LABEL}-")
    node.run("create", "namespace", NAMESPACE)
    try:
        node.run("create", "secret", "generic", "redis-eu", "-n", NAMESPACE,
                 f"--from-literal=url={redis_url}")
        node.apply(_cluster("redis-eu", cql))
        deadline = time.monotonic() + 120
        while not (stuck := await asyncio.to_thread(_unschedulable, node)):
            assert time.monotonic() < deadline, node.run("get", "pods", "-n", NAMESPACE)
            await asyncio.sleep(1)
        assert "didn't match Pod's node affinity/selector" in stuck, stuck
        assert f"kubectl label node NODE {REGION_LABEL}=eu" in stuck, stuck
        events = node.get("events", "-n", NAMESPACE, "--field-selector",
                          "reason=PodsUnschedulable")["items"]
        assert events and events[0]["type"] == "Warning"
        started = time.monotonic()
        node.run("label", "node", "chatplane-node", f"{REGION_LABEL}=eu", "--overwrite")
        deadline = started + READY_TIMEOUT_S
        while not await asyncio.to_thread(_ready_status, node):
            assert time.monotonic() < deadline, node.run("get", "pods", "-n", NAMESPACE)
            await asyncio.sleep(1)
        ready_s = time.monotonic() - started
        print(f"\nnode labelled (pods schedulable) to Ready: {ready_s:.1f}s")
        cluster = node.get("chatcluster", "chat", "-n", NAMESPACE)
        assert cluster["status"]["storage"]["migrated"] is True
        assert cluster["status"]["version"] == "0.1.0"  # read from the Ready pods
        # the im tier started only once the keyspace was migrated: it never crash-looped
        ims = node.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=im")
        assert ims["items"]
        restarts = [c["restartCount"] for p in ims["items"]
                    for c in p["status"]["containerStatuses"]]
        assert restarts == [0] * len(restarts), restarts

        # The gateways advertise their in-cluster DNS name unless advertiseURL is set: point
        # it at the public Service's NodePort, as a user outside the cluster needs. TLS is on
        # by default: the gateways serve WSS, with a certificate from the cluster's CA that
        # carries the advertised host (an IP here, so an IP SAN).
        service = node.get("service", "chat-eu-gateway-public", "-n", NAMESPACE)
        node_port = next(p["nodePort"] for p in service["spec"]["ports"] if p["name"] == "http")
        public = f"wss://{NODE_IP}:{node_port}/ws"
        node.run("patch", "chatcluster", "chat", "-n", NAMESPACE, "--type", "json", "-p",
                 json.dumps([{"op": "add", "path": "/spec/regions/0/gateway/advertiseURL",
                              "value": public}]))
        secret = node.get("secret", "chat-generated", "-n", NAMESPACE)
        token_key = base64.b64decode(secret["data"]["token"]).decode()
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(
            node.get("secret", "chat-ca", "-n", NAMESPACE)["data"]["ca.crt"]))
        with _port_forward(node, "svc/chat-eu-ipconf") as port:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            degraded: list[str] = []  # the lone gateway's roll is expected: never Degraded
            while await asyncio.to_thread(_dispatch_ws, base) != [public]:
                assert time.monotonic() < deadline, await asyncio.to_thread(_diagnose, node)
                degraded += await asyncio.to_thread(_degraded, node)
                await asyncio.sleep(0.5)
            assert not degraded, degraded
            # The gateways listen on 0.0.0.0; their TCP endpoint (TLS) is their pod's address.
            gateway = node.get("pod", "chat-eu-gateway-0", "-n", NAMESPACE)
            tcp = [e["tcp"] for e in await asyncio.to_thread(_dispatch, base)]
            assert tcp == [f"tcps://{gateway['status']['podIP']}:8081"]
            await _chat_exactly_once(base, TokenSigner(token_key), ca=str(ca))
    finally:
        node.run("delete", "namespace", NAMESPACE, "--wait=false")
