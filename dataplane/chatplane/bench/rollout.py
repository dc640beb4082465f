"""`chatplane bench rollout`: a version bump of a deployed ChatCluster (or one gateway pod
deleted), under traffic.

Run where `kubectl` reaches the Kubernetes cluster the ChatCluster runs on. C raw clients
(`rawclient.RawClient`, TLS checked against the cluster's CA when the gateways serve TLS)
log in through dispatch and P chatting SDK pairs send throughout, every message judged by
the delivery checker. Then `spec.image.version` is set to `--to-version`, and the bench
waits until every gateway pod is a new one, Ready, running that version, and the
ChatCluster says `Ready` with that `status.version` (with `--delete-pod`: until the pod
is back and Ready). Reported: the times, the logins it caused (how many, the busiest two
seconds, why the clients' connections ended, how many clients changed gateway by their
LoginAck's server_id) and the checker's verdict once every client is logged in again.

The token key and the CA come from the cluster's generated Secrets (`<name>-generated`,
`<name>-ca`); dispatch is the region's ipconf Service unless `--dispatch` names another way
in (a port-forward, a load balancer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from chatplane.auth import TokenSigner
from chatplane.bench.idle import close_all, connect_all, heartbeats
from chatplane.bench.kube import Kubectl, pods_of, ready, until
from chatplane.bench.rawclient import RawClient
from chatplane.bench.report import emit
from chatplane.bench.spread import run_loop
from chatplane.bench.storm import Pair
from chatplane.checker import DeliveryChecker


def rolled_to(pods: list[dict[str, Any]], version: str, old: set[str], replicas: int) -> bool:
    """Every gateway pod is a new one, Ready, not terminating, and runs `version`."""
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return len(live) == replicas and all(
        ready(p) and p["metadata"]["uid"] not in old
        and p["metadata"]["labels"].get("app.kubernetes.io/version") == version for p in live)


@dataclass
class LoginRate:
    """The raw clients' logins, sampled every `every_s`: the busiest window of them."""

    clients: list[RawClient]
    every_s: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append((time.monotonic(), sum(c.logins for c in self.clients)))
            await asyncio.sleep(self.every_s)

    def peak_per_second(self, window_s: float = 2.0) -> float:
        """Logins per second over the busiest `window_s` seconds."""
        best = 0.0
        start = 0
        for t, count in self.samples:
            while self.samples[start][0] < t - window_s:
                start += 1
            best = max(best, (count - self.samples[start][1]) / window_s)
        return best

    def total(self) -> int:
        return self.samples[-1][1] - self.samples[0][1] if self.samples else 0


def _dispatch_url(kube: Kubectl, cluster: dict[str, Any]) -> str:
    region = cluster["spec"]["regions"][0]["name"]
    service = kube.get("service", f"{cluster['metadata']['name']}-{region}-ipconf")
    port = next(p["port"] for p in service["spec"]["ports"] if p.get("name") == "http")
    return f"http://{service['spec']['clusterIP']}:{port}"


async def run_rollout(args: argparse.Namespace) -> dict[str, Any]:
    kube = Kubectl(args.namespace, args.kubeconfig)
    cluster = kube.get("chatcluster", args.cluster)
    name = cluster["metadata"]["name"]
    was = cluster.get("status", {}).get("version", "")
    if was == args.to_version:
        raise ValueError(f"{name} already runs {was}")
    replicas = len([p for p in pods_of(kube, name, "gateway")
                    if not p["metadata"].get("deletionTimestamp")])
    dispatch = args.dispatch or _dispatch_url(kube, cluster)
    signer = TokenSigner(kube.secret(f"{name}-generated", "token").decode())
    with tempfile.NamedTemporaryFile("wb", suffix=".crt") as ca_file:
        # the gateways' certificates chain to the cluster's CA (TLS is on by default)
        ca_file.write(kube.secret(f"{name}-ca", "ca.crt"))
        ca_file.flush()
        context = ssl.create_default_context(cafile=ca_file.name)
        prefix = f"ro{secrets.token_hex(3)}-"
        clients, dispatcher, connect_s = await connect_all(
            dispatch, signer, args.clients, args.connect_rate, prefix, args.timeout, ssl=context)
        try:
            change = (partial(delete_pod, args, kube) if args.delete_pod
                      else partial(bump_version, args, kube, replicas))
            result = await _roll(args, kube, clients, dispatch, signer, ca_file.name, change)
        finally:
            await close_all(clients, dispatcher)
    what = ({"deleted": args.delete_pod} if args.delete_pod
            else {"from": was, "to": args.to_version})
    return {"cluster": f"{args.namespace}/{name}", **what, "gateways": replicas,
            "connect_all_s": round(connect_s, 1), **result}


async def bump_version(args: argparse.Namespace, kube: Kubectl, replicas: int
                       ) -> dict[str, float]:
    """Set spec.image.version; seconds until every gateway pod is replaced and until the
    ChatCluster is Ready on the version."""
    old = {p["metadata"]["uid"] for p in await asyncio.to_thread(
        pods_of, kube, args.cluster, "gateway")}
    await asyncio.to_thread(kube.run, "patch", "chatcluster", args.cluster, "--type", "merge",
                            "-p", json.dumps({"spec": {"image": {"version": args.to_version}}}))
    gateways_s = await until("every gateway pod replaced", args.timeout, lambda: rolled_to(
        pods_of(kube, args.cluster, "gateway"), args.to_version, old, replicas))

    def cluster_ready() -> bool:
        status = kube.get("chatcluster", args.cluster).get("status", {})
        return ready({"status": status}) and status.get("version") == args.to_version

    ready_s = await until("the ChatCluster Ready on the new version", args.timeout,
                          cluster_ready)
    return {"gateways_replaced_s": gateways_s, "cluster_ready_s": gateways_s + ready_s}


async def delete_pod(args: argparse.Namespace, kube: Kubectl) -> dict[str, float]:
    """Delete one gateway pod as a node drain would (its preStop hook drains it); seconds
    until its replacement is Ready."""
    name = args.delete_pod
    old = (await asyncio.to_thread(kube.get, "pod", name))["metadata"]["uid"]
    await asyncio.to_thread(kube.run, "delete", "pod", name, "--wait=false")

    def back() -> bool:
        try:
            pod = kube.get("pod", name)
        except RuntimeError:  # gone, not yet made again
            return False
        return pod["metadata"]["uid"] != old and ready(pod)

    return {"pod_back_s": await until(f"{name} back and Ready", args.timeout, back)}


async def _roll(args: argparse.Namespace, kube: Kubectl, clients: list[RawClient],
                dispatch: str, signer: TokenSigner, ca: str,
                change: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    checker = DeliveryChecker()
    prefix = f"rp{secrets.token_hex(3)}-"
    pairs = [Pair(dispatch, signer, prefix, i, checker, ca=ca) for i in range(args.pairs)]
    await asyncio.gather(*(p.open() for p in pairs))
    stop, stop_sending = asyncio.Event(), asyncio.Event()
    meter = LoginRate(clients)
    tasks = [loop.create_task(p.receive()) for p in pairs]
    tasks += [loop.create_task(p.send(stop_sending, 0.1)) for p in pairs]
    tasks += [loop.create_task(heartbeats(clients, 5.0)), loop.create_task(meter.run(stop))]
    try:
        on_before = Counter(c.server for c in clients)
        server_of = {c: c.server for c in clients}
        logins = sum(c.logins for c in clients)
        ends = sum((c.ends for c in clients), Counter[str]())
        timings = await change()
        done_s = max(timings.values())
        behind_s = await until("every raw client logged in again", args.timeout,
                               lambda: all(c.resumed.is_set() for c in clients))
        stop_sending.set()
        deadline = loop.time() + 60
        while any(p.received < p.acked for p in pairs) and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        verdict = checker.verdict()
        ended = sum((c.ends for c in clients), Counter[str]()) - ends
        return {
            **{k: round(v, 1) for k, v in timings.items()},
            "clients": len(clients),
            "clients_per_gateway_before": dict(sorted(on_before.items())),
            "changed_gateway": sum(1 for c in clients if c.server != server_of[c]),
            "logins": sum(c.logins for c in clients) - logins,
            "connections_ended": dict(ended),
            "peak_logins_per_s_2s": round(meter.peak_per_second(2.0), 1),
            "all_logged_in_after_s": round(done_s + behind_s, 1),
            "chat_pairs": len(pairs),
            "chat_acked": sum(p.acked for p in pairs),
            "chat_clean": verdict.ok,
            "verdict": verdict.summary(),
        }
    finally:
        stop_sending.set()
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for p in pairs:
            await p.sender.close()
            await p.receiver.close()


def run_rollout_command(args: argparse.Namespace) -> int:
    try:
        result = run_loop(run_rollout(args))  # uvloop: the crowd costs less
    except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"bench rollout: {exc!r}", file=sys.stderr)
        return 1
    emit(result, args.json)
    return 0 if result["chat_clean"] else 1


def add_parser(workloads: argparse._SubParsersAction) -> None:
    rollout = workloads.add_parser(
        "rollout", help="a deployed ChatCluster's version bump under traffic: time, logins, lost/dup")
    change = rollout.add_mutually_exclusive_group(required=True)
    change.add_argument("--to-version", help="the version to roll to")
    change.add_argument("--delete-pod", metavar="POD",
                        help="delete this gateway pod instead (its preStop drains it)")
    rollout.add_argument("--cluster", default="chat", help="the ChatCluster's name")
    rollout.add_argument("--namespace", default="default")
    rollout.add_argument("--kubeconfig", help="else kubectl's own (KUBECONFIG, ~/.kube/config)")
    rollout.add_argument("--dispatch", metavar="URL",
                         help="dispatch base URL (default: the first region's ipconf Service)")
    rollout.add_argument("--clients", type=int, default=3000, help="raw clients held")
    rollout.add_argument("--connect-rate", type=float, default=100.0, help="their logins per s")
    rollout.add_argument("--pairs", type=int, default=5, help="chatting SDK pairs (checked)")
    rollout.add_argument("--timeout", type=float, default=900.0, help="seconds per wait")
    rollout.add_argument("--json", metavar="FILE")
    rollout.set_defaults(func=run_rollout_command)
