"""Gateway rollouts on real pods under traffic: nothing acked is lost (issue 16).

One ChatCluster with 3 gateways on the single-node cluster (chart installed by helm, the
operator from the image), `CLIENTS` raw-TCP clients (TLS, the bench's `RawClient`) plus
chatting SDK devices over WSS through the public NodePort Service (`advertiseURL` set to
it), every message of every device judged by the delivery checker. Then, in one test
(the node, Cassandra, helm and the first Ready take minutes here: paid once), three phases:

1. the version is bumped (the same image tagged as a second version in containerd, as a
   registry holding two versions would serve it): the operator rolls the 3 gateways one by
   one with a paced drain; every gateway pod is replaced once; the rollout time and the
   busiest second of logins are printed;
2. bumped again, and the operator pod is force-deleted (`--grace-period=0 --force`) once the
   first gateway was replaced: the new operator resumes from the pods' annotations, the
   remaining gateways are replaced, none twice;
3. a gateway pod deleted by hand: its preStop hook drains it at the drain rate.

After each phase: the checker finds nothing lost, duplicated or reordered, and every raw
client is logged in again.

Dispatch goes to ipconf's ClusterIP (kube-proxy makes it reachable from the node): a
port-forward would die with the ipconf pod the version bump replaces. The raw clients'
TCP endpoint is the pod IP, which the gateway's certificate does not carry (only the
public Service's names and advertiseURL's host): they verify the chain against the
cluster's CA but not the host name.

`CHATPLANE_NODE_ROLLOUT_CLIENTS` (default 300) sets the raw clients; the issue's size is
3,000. `CHATPLANE_NODE_ROLLOUT_RATE` (default 50) is the drain rate per second.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth import TokenSigner
from chatplane.bench.idle import connect_all, heartbeats
from chatplane.bench.rawclient import Dispatcher, RawClient
from tests.cluster.conftest import Chat
from tests.drain.test_drain_rollout_processes import LoginMeter, chat_until
from tests.node.kube_node import NODE_IP, STATE, Kubectl
from tests.node.test_node_chatcluster import NAMESPACE, REGION_LABEL, _diagnose, _dispatch_ws

pytestmark = [pytest.mark.node, pytest.mark.slow]

CLIENTS = int(os.environ.get("CHATPLANE_NODE_ROLLOUT_CLIENTS", "300"))
RATE = int(os.environ.get("CHATPLANE_NODE_ROLLOUT_RATE", "50"))
REPOSITORY = "ghcr.io/chatplane/chatplane"
BUILT = "0.1.0"
GATEWAYS = 3
GATEWAY = "app.kubernetes.io/component=gateway"
OPERATOR_NAMESPACE = "chatplane-system"
# Paced, never a burst (a gateway's clients all at once would be ~CLIENTS / 3 in one second),
# for the hand-deleted pod.
# Looser than on local processes (1.3 * rate + 10): a client sent away can be handed a gateway
# that has just begun draining (dispatch learns it a moment later), is refused, and logs in
# on its backoff together with the next ones.
PEAK = 2 * RATE + 10
# per phase: the new version's migration Job, then per gateway its drain (CLIENTS / 3 / RATE
# seconds) and its new pod's start (up to a minute on this loaded 2-core machine)
ROLLOUT_TIMEOUT_S = 600.0 + 2 * CLIENTS / RATE


def _cluster(redis_secret: str, cql: str, version: str, advertise: str = "") -> str:
    gateway = "{expose: {type: NodePort}" + (f", advertiseURL: \"{advertise}\"" if advertise
                                            else "") + "}"
    return f"""
apiVersion: chatplane.dev/v1alpha1
kind: ChatCluster
metadata: {{name: chat, namespace: {NAMESPACE}}}
spec:
  image: {{repository: {REPOSITORY}, version: "{version}", pullPolicy: Never}}
  storage: {{keyspace: chatplane, consistency: LOCAL_ONE}}
  upgrade: {{drainRate: {RATE}, drainDeadlineSeconds: 120, maxUnavailable: 1}}
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


def _tag(version: str) -> None:
    """The built image under a second version, as a registry would serve a new release."""
    subprocess.run(["ctr", "--address", str(STATE / "containerd" / "containerd.sock"),
                    "-n", "k8s.io", "images", "tag", "--force", f"{REPOSITORY}:{BUILT}",
                    f"{REPOSITORY}:{version}"], check=True, capture_output=True, timeout=60)


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def _gateways(node: Kubectl) -> list[dict[str, Any]]:
    return list(node.get("pods", "-n", NAMESPACE, "-l", GATEWAY)["items"])


def _events(node: Kubectl, reason: str) -> list[str]:
    items = node.get("events", "-n", NAMESPACE, "--field-selector", f"reason={reason}")["items"]
    return sorted(str(e["message"]) for e in items)


@dataclass
class PodWatch:
    """Every gateway pod (name → uids) seen while it runs, polled twice a second."""

    node: Kubectl
    uids: dict[str, list[str]] = field(default_factory=dict)

    def seen(self) -> list[dict[str, Any]]:
        pods = _gateways(self.node)
        for pod in pods:
            name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
            if uid not in self.uids.setdefault(name, []):
                self.uids[name].append(uid)
        return pods

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                await asyncio.to_thread(self.seen)
            await asyncio.sleep(0.5)


@dataclass
class Live:
    """The running cluster as its users reach it, and the traffic on it."""

    node: Kubectl
    dispatch_url: str
    signer: TokenSigner
    ca: str
    chat: Chat
    raw: list[RawClient]
    dispatcher: Dispatcher

    async def settle_clean(self, moved: str) -> None:
        """The checker finds every acked message once and in order on every device, and
        every raw client is logged in again."""
        await self.chat.settle(120)
        self.chat.assert_clean()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while (behind := [c.user for c in self.raw if not c.resumed.is_set()]) and \
                loop.time() < deadline:
            await asyncio.sleep(0.5)
        assert not behind, f"{moved}: {len(behind)} raw clients not logged in again"


@contextlib.asynccontextmanager
async def _traffic(live: Live) -> AsyncIterator[None]:
    """The SDK devices chat while the block runs; the last round is acked when it ends (so
    the checker then judges a settled state)."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(chat_until(live.chat, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 120)


async def _until(what: str, timeout_s: float, check: Any, node: Kubectl) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not in {timeout_s:.0f}s:\n"
                                 + await asyncio.to_thread(_diagnose, node))
        await asyncio.sleep(1)


def _rolled_to(node: Kubectl, version: str, old: set[str]) -> bool:
    """Every gateway pod is a new one, Ready, and runs `version`."""
    pods = _gateways(node)
    return len(pods) == GATEWAYS and all(
        _ready(p) and p["metadata"]["uid"] not in old and not p["metadata"].get(
            "deletionTimestamp") and p["metadata"]["labels"].get(
            "app.kubernetes.io/version") == version for p in pods)


@contextlib.asynccontextmanager
async def _running(node: Kubectl, redis_url: str, cql: str, tmp_path: Path
                   ) -> AsyncIterator[Live]:
    """The shared setup: the cluster applied and Ready with 3 gateways behind the public
    NodePort Service, the raw clients logged in and the SDK devices connected."""
    node.run("label", "node", "chatplane-node", f"{REGION_LABEL}=eu", "--overwrite")
    deadline = time.monotonic() + 180
    while f"namespace/{NAMESPACE}" in node.run("get", "namespaces", "-o", "name").split():
        assert time.monotonic() < deadline, f"namespace {NAMESPACE} still terminating"
        await asyncio.sleep(1)
    node.run("create", "namespace", NAMESPACE)
    try:
        node.run("create", "secret", "generic", "redis-eu", "-n", NAMESPACE,
                 f"--from-literal=url={redis_url}")
        node.apply(_cluster("redis-eu", cql, BUILT))
        # advertiseURL names the NodePort, known once the Service exists: set it before the
        # first gateways are ready (their roll to it is then a replacement without drain)
        service: dict[str, Any] = {}
        deadline = time.monotonic() + 120
        while not service:
            with contextlib.suppress(RuntimeError):
                service = node.get("service", "chat-eu-gateway-public", "-n", NAMESPACE)
            assert time.monotonic() < deadline, "no public gateway Service"
            await asyncio.sleep(0.5)
        node_port = next(p["nodePort"] for p in service["spec"]["ports"] if p["name"] == "http")
        public = f"wss://{NODE_IP}:{node_port}/ws"
        node.apply(_cluster("redis-eu", cql, BUILT, advertise=public))
        ipconf = node.get("service", "chat-eu-ipconf", "-n", NAMESPACE)["spec"]["clusterIP"]
        dispatch_url = f"http://{ipconf}:8080"

        def serving() -> bool:
            pods = _gateways(node)
            return (len(pods) == GATEWAYS and all(_ready(p) for p in pods)
                    and _dispatch_ws(dispatch_url) == [public] * GATEWAYS)

        await _until("3 gateways serving the public URL", 420, serving, node)
        secret = node.get("secret", "chat-generated", "-n", NAMESPACE)
        signer = TokenSigner(base64.b64decode(secret["data"]["token"]).decode())
        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(
            node.get("secret", "chat-ca", "-n", NAMESPACE)["data"]["ca.crt"]))
        context = ssl.create_default_context(cafile=str(ca))
        context.check_hostname = False  # the TCP endpoint is the pod IP, not in the cert
        raw, dispatcher, took = await connect_all(dispatch_url, signer, CLIENTS, 100.0, "idle",
                                                  timeout_s=300, ssl=context)
        print(f"\n{CLIENTS} raw TLS clients logged in in {took:.1f}s")
        chat = Chat()
        await chat.open_at(dispatch_url, signer, pairs=3, tag="r", ca=str(ca))
        live = Live(node, dispatch_url, signer, str(ca), chat, raw, dispatcher)
        try:
            yield live
        finally:
            await chat.close()
            await asyncio.gather(*(c.close() for c in raw))
            await dispatcher.close()
    finally:
        node.run("delete", "namespace", NAMESPACE, "--wait=false")


def _operator_pods(node: Kubectl) -> list[dict[str, Any]]:
    return [p for p in node.get("pods", "-n", OPERATOR_NAMESPACE)["items"]
            if not p["metadata"].get("deletionTimestamp")]


async def _roll(live: Live, version: str, watch: PodWatch,
                kill_operator_after_first: bool = False) -> tuple[float, dict[str, list[str]]]:
    """Bump the version and wait until every gateway runs it; (seconds, the uids each pod
    name had during the rollout)."""
    node = live.node
    _tag(version)
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await asyncio.to_thread(
        watch.seen)}
    watch.uids.clear()
    await asyncio.to_thread(watch.seen)
    started = time.monotonic()
    node.run("patch", "chatcluster", "chat", "-n", NAMESPACE, "--type", "merge", "-p",
             json.dumps({"spec": {"image": {"version": version}}}))
    if kill_operator_after_first:
        def one_replaced() -> bool:
            return any(_ready(p) and p["metadata"]["uid"] not in before.values()
                       for p in _gateways(node))

        await _until("the first gateway replaced", ROLLOUT_TIMEOUT_S, one_replaced, node)
        [operator] = _operator_pods(node)
        node.run("delete", "pod", "-n", OPERATOR_NAMESPACE, operator["metadata"]["name"],
                 "--grace-period=0", "--force")
        print(f"operator pod {operator['metadata']['name']} force-deleted after "
              f"{time.monotonic() - started:.1f}s (1 gateway replaced)")
    await _until(f"every gateway on {version}", ROLLOUT_TIMEOUT_S,
                 lambda: _rolled_to(node, version, set(before.values())), node)
    seconds = time.monotonic() - started
    await asyncio.to_thread(watch.seen)
    return seconds, {name: list(uids) for name, uids in watch.uids.items()}


@pytest.mark.timeout(2400)
async def test_gateway_rollouts_operator_restart_and_pod_delete_lose_nothing(
        node: Kubectl, backing: tuple[str, str], operator_release: None,
        tmp_path: Path) -> None:
    redis_url, cql = backing
    async with _running(node, redis_url, cql, tmp_path) as live:
        stop = asyncio.Event()
        meter = LoginMeter(live.raw)
        watch = PodWatch(node)
        loop = asyncio.get_running_loop()
        background = [loop.create_task(meter.run(stop)), loop.create_task(watch.run(stop)),
                      loop.create_task(heartbeats(live.raw, 5.0))]
        try:
            # 1. the version bump: each gateway drained at RATE and replaced once
            async with _traffic(live):
                seconds, uids = await _roll(live, "0.1.1", watch)
            assert all(len(u) == 2 for u in uids.values()) and len(uids) == GATEWAYS, uids
            replaced = await asyncio.to_thread(_events, node, "GatewayReplaced")
            await live.settle_clean("rollout")
            peak = meter.peak_per_second()
            print(f"rollout of {GATEWAYS} gateways holding {CLIENTS} raw + "
                  f"{len(live.chat.devices)} SDK clients: {seconds:.1f}s at drainRate {RATE}, "
                  f"peak {peak} logins/s; {replaced}")
            # not asserted here: a version bump rolls every tier at once, and the peak
            # (78-159/s at rate 50 in the runs so far) is not yet explained; phase 3, where
            # only the gateway moves, asserts the pacing

            # 2. the operator force-deleted once the first gateway was replaced
            async with _traffic(live):
                seconds, uids = await _roll(live, "0.1.2", watch,
                                            kill_operator_after_first=True)
            # none replaced twice: each name had its old pod and exactly one new one
            assert all(len(u) == 2 for u in uids.values()) and len(uids) == GATEWAYS, uids
            assert len(_operator_pods(node)) == 1
            await live.settle_clean("rollout with an operator restart")
            print(f"rollout with the operator restarted: {seconds:.1f}s")

            # 3. a gateway pod deleted by hand: its preStop drains it at RATE
            victim = "chat-eu-gateway-1"
            old_uid = node.get("pod", victim, "-n", NAMESPACE)["metadata"]["uid"]
            held = sum(1 for c in live.raw if c.gateway == victim)
            assert held, sorted({c.gateway for c in live.raw})
            logins = sum(c.logins for c in live.raw)
            meter.samples.clear()
            started = time.monotonic()
            node.run("delete", "pod", "-n", NAMESPACE, victim, "--wait=false")
            async with _traffic(live):
                await _until(f"{victim} drained and back", ROLLOUT_TIMEOUT_S,
                             lambda: _victim_back(node, victim, old_uid), node)
            await live.settle_clean("hand-deleted pod")
            moved = sum(c.logins for c in live.raw) - logins
            peak = meter.peak_per_second()
            print(f"{victim} deleted by hand holding {held} raw clients: back in "
                  f"{time.monotonic() - started:.1f}s, {moved} logins, peak {peak}/s")
            assert moved >= held, (moved, held)
            assert peak <= PEAK, f"{peak} logins in one second: not paced"
        finally:
            stop.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)


def _victim_back(node: Kubectl, name: str, old_uid: str) -> bool:
    try:
        pod = node.get("pod", name, "-n", NAMESPACE)
    except RuntimeError:  # gone, not yet re-created
        return False
    return pod["metadata"]["uid"] != old_uid and _ready(pod)
