"""Gateway rollouts on real pods under traffic: nothing acked is lost (issue 16).

The session's ChatCluster (3 gateways behind the public NodePort Service, the chart
installed by helm, the operator from the image; tests/node/chatcluster.py), `CLIENTS`
raw-TCP clients (TLS, the bench's `RawClient`, verifying the certificate against the
cluster's CA and the advertised host) plus chatting SDK devices over WSS, every message of
every device judged by the delivery checker. Then, in one test, two phases:

1. the version is bumped (the same image tagged as a second version in containerd, as a
   registry holding two versions would serve it): the operator rolls the 3 gateways one by
   one with a paced drain, and its pod is force-deleted (`--grace-period=0 --force`) once
   the first gateway was replaced: the new operator resumes from the pods' annotations;
   every gateway pod is replaced exactly once; the rollout time is printed;
2. a gateway pod deleted by hand: its preStop hook drains it at the drain rate, and the
   busiest second of logins stays within the pace.

After each phase: the checker finds nothing lost, duplicated or reordered, every raw client
is logged in again, and no drained pod recorded a FailedPreStopHook event.

Dispatch goes to ipconf's ClusterIP (kube-proxy makes it reachable from the node): a
port-forward would die with the ipconf pod the version bump replaces.

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
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from chatplane.bench.idle import connect_all, heartbeats
from chatplane.bench.rawclient import Dispatcher, RawClient
from tests.cluster.conftest import Chat
from tests.drain.test_drain_rollout_processes import LoginMeter, chat_until
from tests.node.chatcluster import (
    BUILT,
    GATEWAYS,
    NAMESPACE,
    RATE,
    REPOSITORY,
    Deployed,
    diagnose,
    gateways,
    pod_ready,
)
from tests.node.kube_node import STATE, Kubectl

pytestmark = [pytest.mark.node, pytest.mark.slow]

CLIENTS = int(os.environ.get("CHATPLANE_NODE_ROLLOUT_CLIENTS", "300"))
OPERATOR_NAMESPACE = "chatplane-system"
# Paced, never a burst (a gateway's clients all at once would be ~CLIENTS / 3 in one second),
# for the hand-deleted pod: the bound the local processes' rollout holds. (It was 2 * rate +
# 10 here while a gateway sent clients away before dispatch knew it drained: handed it again,
# refused, they came back in a clump; 216 at rate 100 with 3,000 clients.)
PEAK = int(1.3 * RATE) + 10
# the new version's migration Job, then per gateway its drain (CLIENTS / 3 / RATE seconds)
# and its new pod's start (up to a minute on this loaded 2-core machine), and the operator's
ROLLOUT_TIMEOUT_S = 600.0 + 2 * CLIENTS / RATE


def _tag(version: str) -> None:
    """The built image under a second version, as a registry would serve a new release."""
    subprocess.run(["ctr", "--address", str(STATE / "containerd" / "containerd.sock"),
                    "-n", "k8s.io", "images", "tag", "--force", f"{REPOSITORY}:{BUILT}",
                    f"{REPOSITORY}:{version}"], check=True, capture_output=True, timeout=60)


def _events(node: Kubectl, reason: str) -> list[str]:
    items = node.get("events", "-n", NAMESPACE, "--field-selector", f"reason={reason}")["items"]
    return sorted(f"{e['involvedObject'].get('name')}: {e['message']}" for e in items)


@dataclass
class PodWatch:
    """Every gateway pod (name → uids) seen while it runs, polled twice a second."""

    node: Kubectl
    uids: dict[str, list[str]] = field(default_factory=dict)

    def seen(self) -> list[dict[str, Any]]:
        pods = gateways(self.node)
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

    cluster: Deployed
    chat: Chat
    raw: list[RawClient]
    dispatcher: Dispatcher

    @property
    def node(self) -> Kubectl:
        return self.cluster.node

    async def settle_clean(self, moved: str) -> None:
        """The checker finds every acked message once and in order on every device,
        every raw client is logged in again, and no preStop hook failed."""
        await self.chat.settle(120)
        self.chat.assert_clean()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while (behind := [c.user for c in self.raw if not c.resumed.is_set()]) and \
                loop.time() < deadline:
            await asyncio.sleep(0.5)
        assert not behind, f"{moved}: {len(behind)} raw clients not logged in again"
        failed = await asyncio.to_thread(_events, self.node, "FailedPreStopHook")
        assert not failed, f"{moved}: {failed}"


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
        try:
            await asyncio.wait_for(task, 120)
        except TimeoutError:
            stuck = [f"{d.user}/{d.device}: {len(d.client._pending)} pending, "
                     f"connected={d.client._connected.is_set()}, "
                     f"reconnects={d.client.reconnects}" for d in live.chat.devices
                     if d.client._pending]
            raise AssertionError(
                f"the last round of sends not acked in 120s: {stuck}\n"
                + await asyncio.to_thread(diagnose, live.node)) from None


async def _until(what: str, timeout_s: float, check: Any, node: Kubectl) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not in {timeout_s:.0f}s:\n"
                                 + await asyncio.to_thread(diagnose, node))
        await asyncio.sleep(0.5)


def _rolled_to(node: Kubectl, version: str, old: set[str]) -> bool:
    """Every gateway pod is a new one, Ready, and runs `version`."""
    pods = gateways(node)
    return len(pods) == GATEWAYS and all(
        pod_ready(p) and p["metadata"]["uid"] not in old and not p["metadata"].get(
            "deletionTimestamp") and p["metadata"]["labels"].get(
            "app.kubernetes.io/version") == version for p in pods)


@contextlib.asynccontextmanager
async def _running(cluster: Deployed) -> AsyncIterator[Live]:
    """The raw clients logged in and the SDK devices connected, through the public
    NodePort Service."""
    # the TCP endpoint dispatch hands out is advertiseTCP, in the certificate: host checked
    context = ssl.create_default_context(cafile=cluster.ca)
    raw, dispatcher, took = await connect_all(cluster.dispatch_url, cluster.signer, CLIENTS,
                                              100.0, "idle", timeout_s=300, ssl=context)
    print(f"\n{CLIENTS} raw TLS clients logged in in {took:.1f}s")
    chat = Chat()
    try:
        await chat.open_at(cluster.dispatch_url, cluster.signer, pairs=3, tag="r", ca=cluster.ca)
        yield Live(cluster, chat, raw, dispatcher)
    finally:
        await chat.close()
        await asyncio.gather(*(c.close() for c in raw))
        await dispatcher.close()


def _operator_pods(node: Kubectl) -> list[dict[str, Any]]:
    return [p for p in node.get("pods", "-n", OPERATOR_NAMESPACE)["items"]
            if not p["metadata"].get("deletionTimestamp")]


async def _roll_killing_the_operator(live: Live, version: str, watch: PodWatch
                                     ) -> tuple[float, dict[str, list[str]]]:
    """Bump the version, force-delete the operator's pod once the first gateway pod was
    replaced, and wait until every gateway runs the version; (seconds, the uids each pod
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

    def one_replaced() -> bool:  # its new pod exists: the operator's restart overlaps its start
        return any(p["metadata"]["uid"] not in before.values() for p in gateways(node))

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


@pytest.mark.timeout(1800)
async def test_gateway_rollout_operator_restart_and_pod_delete_lose_nothing(
        node: Kubectl, chat_cluster: Deployed) -> None:
    async with _running(chat_cluster) as live:
        stop = asyncio.Event()
        meter = LoginMeter(live.raw)
        watch = PodWatch(node)
        loop = asyncio.get_running_loop()
        background = [loop.create_task(meter.run(stop)), loop.create_task(watch.run(stop)),
                      loop.create_task(heartbeats(live.raw, 5.0))]
        try:
            # 1. the version bump, the operator force-deleted once the first gateway was
            # replaced: each gateway drained at RATE and replaced exactly once, the new
            # operator resuming where the old one stopped
            async with _traffic(live):
                seconds, uids = await _roll_killing_the_operator(live, "0.1.1", watch)
            assert all(len(u) == 2 for u in uids.values()) and len(uids) == GATEWAYS, uids
            assert len(_operator_pods(node)) == 1
            replaced = await asyncio.to_thread(_events, node, "GatewayReplaced")
            await live.settle_clean("rollout with an operator restart")
            print(f"why the raw clients' connections ended in the rollout: {dict(_ends(live))}")
            print(f"rollout of {GATEWAYS} gateways holding {CLIENTS} raw + "
                  f"{len(live.chat.devices)} SDK clients, the operator restarted: "
                  f"{seconds:.1f}s at drainRate {RATE}, peak {meter.peak_per_second()} "
                  f"logins/s; {replaced}")
            # the peak is not asserted here: a version bump rolls every tier at once
            # (ipconf too); phase 2, where only the gateway moves, asserts the pacing

            # 2. a gateway pod deleted by hand: its preStop drains it at RATE
            victim = "chat-eu-gateway-1"
            pod = node.get("pod", victim, "-n", NAMESPACE)
            old_uid = pod["metadata"]["uid"]
            # what the pod holds, from its admin API: through the one NodePort, kube-proxy
            # picks the pod a client lands on, not dispatch (docs/operator.md)
            held = await asyncio.to_thread(_connections, node, pod) - len(live.chat.devices)
            assert held > 0, held
            logins = sum(c.logins for c in live.raw)
            ends_before = _ends(live)
            meter.samples.clear()
            started = time.monotonic()
            node.run("delete", "pod", "-n", NAMESPACE, victim, "--wait=false")
            async with _traffic(live):
                await _until(f"{victim} drained and back", ROLLOUT_TIMEOUT_S,
                             lambda: _victim_back(node, victim, old_uid), node)
            await live.settle_clean("hand-deleted pod")
            moved = sum(c.logins for c in live.raw) - logins
            ends = _ends(live) - ends_before
            print(f"why the raw clients' connections ended meanwhile: {dict(ends)}")
            # over 2 s: on this loaded machine a client stalled for half a second logs in
            # together with the next ones, which the gateway's pacing cannot prevent
            peak = meter.peak_per_second(window_s=2.0)
            print(f"{victim} deleted by hand holding {held} raw clients: back in "
                  f"{time.monotonic() - started:.1f}s, {moved} logins, peak {peak:.1f}/s")
            assert moved >= held, (moved, held)
            assert peak <= PEAK, f"{peak:.1f} logins/s over the busiest 2 s: not paced"
        finally:
            stop.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)


def _ends(live: Live) -> Counter[str]:
    """Why the raw clients' connections ended so far, summed over the clients."""
    return sum((c.ends for c in live.raw), Counter())


def _connections(node: Kubectl, pod: dict[str, Any]) -> int:
    """The live connections a gateway pod reports (GET /admin/drain on its admin port)."""
    secret = node.get("secret", "chat-generated", "-n", NAMESPACE)["data"]["admin"]
    request = urllib.request.Request(
        f"http://{pod['status']['podIP']}:9091/admin/drain",
        headers={"Authorization": f"Bearer {base64.b64decode(secret).decode()}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return int(json.load(reply)["connections"])


def _victim_back(node: Kubectl, name: str, old_uid: str) -> bool:
    try:
        pod = node.get("pod", name, "-n", NAMESPACE)
    except RuntimeError:  # gone, not yet re-created
        return False
    return pod["metadata"]["uid"] != old_uid and pod_ready(pod)
