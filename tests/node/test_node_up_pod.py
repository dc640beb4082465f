"""`chatplane up` as a real pod: the image built here (scripts/image/build) runs on the
single-node cluster as uid 10001 with a read-only root filesystem, embedded SQLite storage on
an emptyDir, reached from outside the cluster through a NodePort Service by the real SDK.
Every message sent arrives exactly once, in order. The pod's start time (apply to Ready) is
printed for docs/kubernetes-node.md."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.node.kube_node import IMAGE, NODE_IP, Kubectl

pytestmark = [pytest.mark.node, pytest.mark.slow]

MESSAGES = 20


def _service(namespace: str) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: chat, namespace: {namespace}}}
spec:
  type: NodePort
  selector: {{app: chat}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"""


def _pod(namespace: str, token_key: str, advertise_url: str) -> str:
    # Without CHATPLANE_GATEWAY_ADVERTISE_URL, dispatch hands out the listen address,
    # ws://0.0.0.0:8080/ws, which no client outside the pod can reach.
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: chat-keys, namespace: {namespace}}}
stringData: {{token.key: "{token_key}"}}
---
apiVersion: v1
kind: Pod
metadata:
  name: chat
  namespace: {namespace}
  labels: {{app: chat}}
spec:
  securityContext: {{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001}}
  containers:
  - name: up
    image: {IMAGE}
    imagePullPolicy: Never
    args: [up, --host, 0.0.0.0, --port, "8080", --tcp-port, "8081", --data-dir, /data]
    env: [{{name: CHATPLANE_GATEWAY_ADVERTISE_URL, value: "{advertise_url}"}}]
    ports: [{{containerPort: 8080, name: http}}]
    readinessProbe:
      httpGet: {{path: /readyz, port: http}}
      periodSeconds: 1
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: data, mountPath: /data}}
    - {{name: tmp, mountPath: /tmp}}
    - {{name: keys, mountPath: /data/token.key, subPath: token.key, readOnly: true}}
  volumes:
  - {{name: data, emptyDir: {{}}}}
  - {{name: tmp, emptyDir: {{}}}}
  - {{name: keys, secret: {{secretName: chat-keys}}}}
"""


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as reply:
            return int(reply.status) == 200
    except OSError:
        return False


def _dispatch(base_url: str) -> list[dict[str, str]]:
    """ipconf's answer for alice: the endpoints a client is told to use."""
    with urllib.request.urlopen(f"{base_url}/v1/dispatch?uid=alice", timeout=5) as reply:
        return list(json.load(reply)["endpoints"])


async def _chat_exactly_once(url: str, signer: TokenSigner, ca: str | None = None) -> list[str]:
    alice = Client(url, signer.mint("alice", "phone"), ca=ca)
    bob = Client(url, signer.mint("bob", "laptop"), ca=ca)
    await alice.connect()
    await bob.connect()
    try:
        conversation = await alice.direct("bob")
        sent = [f"hello {i}" for i in range(MESSAGES)]
        last_seq = 0
        for text in sent:
            last_seq = (await asyncio.wait_for(alice.send_text(conversation, text), 10)).seq
        received: list[str] = []

        async def collect() -> None:
            async for message in bob.messages():
                if message.conversation_id == conversation:
                    received.append(message.text)
                    if message.seq >= last_seq:
                        return

        await asyncio.wait_for(collect(), 20)
        # A few more seconds: a duplicate would arrive now.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(collect(), 2)
        assert received == sent
        return received
    finally:
        await alice.close()
        await bob.close()


async def test_up_pod_chats_through_a_nodeport(node: Kubectl, node_namespace: str) -> None:
    token_key = secrets.token_urlsafe(32)
    node.apply(_service(node_namespace))
    service = node.get("service", "chat", "-n", node_namespace)
    node_port = service["spec"]["ports"][0]["nodePort"]
    base = f"{NODE_IP}:{node_port}"
    started = time.monotonic()
    node.apply(_pod(node_namespace, token_key, f"ws://{base}/ws"))
    node.wait_ready(node_namespace, "app=chat", timeout_s=120)
    start_s = time.monotonic() - started
    pod = node.get("pod", "chat", "-n", node_namespace)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    print(f"\npod start (apply to Ready): {start_s:.1f}s; NodePort {node_port}")
    # kube-proxy programs the NodePort's endpoint a moment after the pod is Ready (its
    # iptables sync follows the EndpointSlice); until then the port rejects connections.
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(_answers, f"http://{base}"):
        assert time.monotonic() < deadline, f"NodePort {node_port} never answered"
        await asyncio.sleep(0.2)
    print(f"NodePort answering {time.monotonic() - started:.1f}s after apply")
    endpoints = await asyncio.to_thread(_dispatch, f"http://{base}")
    assert [e["ws"] for e in endpoints] == [f"ws://{base}/ws"]
    # Bound to 0.0.0.0, the TCP listener is advertised at the pod's address, not 0.0.0.0.
    assert [e["tcp"] for e in endpoints] == [f"{pod['status']['podIP']}:8081"]
    await _chat_exactly_once(f"http://{base}", TokenSigner(token_key))
