"""As a platform team would, on real pods: `helm install` the chart (the operator runs from
the image built here), `kubectl apply` a one-region ChatCluster, wait for Ready in its
status (the session's `chat_cluster`, tests/node/chatcluster.py), then reach ipconf through a
port-forward and the gateways through their public NodePort Service, and chat: through the
SDK over WSS, every message arriving exactly once, in order; and with a raw TCP+TLS client
on the TCP endpoint dispatch hands out, its certificate verified against the cluster's CA
and the host dialled.

Redis and Cassandra are host processes the pods reach (tests/node/host_services.py).

The node starts without the region label the pods select: the status must have said why
they were Pending (PodsUnschedulable, with the label to set) before the setup set it. The
time from then to Ready is printed for docs/kubernetes-node.md; the storage migration gates
the im tier, so no im pod crash-loops on an unmigrated keyspace, and `status.version` is
what the Ready pods run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
from collections.abc import Iterator

import pytest

from chatplane.bench.rawclient import Dispatcher, RawClient
from chatplane.client import Client
from tests.node.chatcluster import (
    GATEWAYS,
    NAMESPACE,
    REGION_LABEL,
    Deployed,
    cluster_status,
    dispatch,
    dispatch_ws,
)
from tests.node.kube_node import Kubectl
from tests.node.test_node_up_pod import _chat_exactly_once

pytestmark = [pytest.mark.node, pytest.mark.slow]


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


async def _raw_tls_chat(base: str, live: Deployed) -> None:
    """A raw TCP+TLS client (the bench's RawClient) logs in on the endpoint dispatch hands
    out, verifying the gateway's certificate (chain and host) against the cluster's CA, and
    receives a message an SDK client sends it."""
    context = ssl.create_default_context(cafile=live.ca)  # check_hostname: on
    dispatcher = Dispatcher(base, context)
    raw = RawClient(dispatcher, "carol", live.signer.mint("carol", "raw"))
    dave = Client(base, live.signer.mint("dave", "phone"), ca=live.ca)
    raw.start()
    try:
        await asyncio.wait_for(raw.resumed.wait(), 30)
        await dave.connect()
        conversation = await dave.direct("carol")
        await asyncio.wait_for(dave.send_text(conversation, "over tcps"), 10)
        # its inbox cursor moves with the push it acks, or with the sync a SyncHint starts
        # when the push was lost between the tiers (a cold CI at load 27 lost one)
        for _ in range(300):
            if raw.inbox_seq >= 1:
                break
            await asyncio.sleep(0.1)
        assert raw.inbox_seq >= 1, "the raw TLS client got nothing in 30 s"
        assert raw.logins == 1
    finally:
        await dave.close()
        await raw.close()
        await dispatcher.close()


async def test_helm_install_apply_ready_and_chat(node: Kubectl,
                                                 chat_cluster: Deployed) -> None:
    live = chat_cluster
    stuck = live.unschedulable
    assert "didn't match Pod's node affinity/selector" in stuck, stuck
    assert f"kubectl label node NODE {REGION_LABEL}=eu" in stuck, stuck
    assert live.unschedulable_events and live.unschedulable_events[0]["type"] == "Warning"
    print(f"\nnode labelled (pods schedulable) to Ready: {live.ready_s:.1f}s")
    status = cluster_status(node)
    assert status["storage"]["migrated"] is True
    assert status["version"] == "0.1.0"  # read from the Ready pods
    # the im tier started only once the keyspace was migrated: it never crash-looped
    ims = node.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=im")
    assert ims["items"]
    restarts = [c["restartCount"] for p in ims["items"]
                for c in p["status"]["containerStatuses"]]
    assert restarts == [0] * len(restarts), restarts

    # A user outside the cluster: ipconf through a port-forward, the gateways through the
    # public NodePort Service (advertiseURL, advertiseTCP), TLS verified against the CA.
    with _port_forward(node, "svc/chat-eu-ipconf") as port:
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(dispatch_ws, base) == [live.public_ws] * GATEWAYS
        tcp = [e["tcp"] for e in await asyncio.to_thread(dispatch, base)]
        assert tcp == [live.public_tcp] * GATEWAYS
        await _chat_exactly_once(base, live.signer, ca=live.ca)
        await _raw_tls_chat(base, live)
