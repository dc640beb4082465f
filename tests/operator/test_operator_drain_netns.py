"""The operator's drain call carries the admin secret, tested from a non-loopback address.

Three real `chatplane up` gateways run inside a network namespace on `10.234.<k>.2`
(`netns.py`); the host reaches them over a veth pair, as the operator reaches pod IPs. The
operator's own code drives them: `drain.GatewayAdmin` with the `drain.AdminAccess` that
`counting.admin_access()` reads from the cluster's generated Secret, and `drain.Orchestrator`
for a rollout. Must hold: a drain with the secret is accepted, one without it (or with a
wrong one) is refused with 401 and the gateway keeps every connection, and a rollout of the
three gateways takes about connections ÷ rate, far under the drain deadline it would wait
out per gateway if its calls were refused.

Until the data plane serves admin on its own port, its gateways serve `/admin/drain` on the
HTTP port and trust loopback; from this address only the secret lets a call in. The admin
port the operator dials is `spec.ports.admin` (here the port the gateway serves it on).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cluster_body
from netns import NamespaceNode, VethNamespace, can_make_namespaces, veth_namespace

from chatplane.auth import TokenSigner
from chatplane.bench.rawclient import Dispatcher, RawClient
from chatplane_operator import api, counting, drain
from chatplane_operator.specs import config

pytestmark = pytest.mark.slow

TOKEN_KEY = "netns-token-key-0123456789abcdef"
ADMIN_SECRET = "netns-admin-secret-0123456789"
CLIENTS = 150
RATE = 50.0
DEADLINE_S = 60.0


def _separate_admin_port() -> bool:
    """Whether the data plane serves admin on its own port (CHATPLANE_ADMIN_PORT)."""
    from chatplane import settings

    return any(f.name == "admin" for f in dataclasses.fields(settings.Settings()))


class SecretReader:
    """The one Secret `counting.admin_access()` reads, as the apiserver would return it."""

    def __init__(self, cluster: api.ChatCluster) -> None:
        self.secret = config.build_generated_secret(cluster, token=TOKEN_KEY.encode(),
                                                    admin=ADMIN_SECRET.encode())

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        meta = self.secret["metadata"]
        return self.secret if (kind, namespace, name) == ("Secret", meta["namespace"],
                                                          meta["name"]) else None


class NodeDispatcher(Dispatcher):
    """Dispatch as ipconf would: never a draining gateway; after a drain, the gateways
    already at the new version (so each client moves once)."""

    def __init__(self, nodes: list[NamespaceNode]) -> None:
        super().__init__("http://unused")
        self.nodes = nodes
        self.draining: set[str] = set()
        self.upgraded: set[str] = set()

    async def endpoints(self, uid: str) -> list[dict[str, str]]:
        up = [n for n in self.nodes if n.alive and n.name not in self.draining]
        new = [n for n in up if n.name in self.upgraded]
        pool = new or up
        if not pool:
            return []
        node = pool[zlib.crc32(uid.encode()) % len(pool)]
        return [{"tcp": node.tcp, "gateway_id": node.name}]


class NamespaceFleet:
    """`drain.Fleet` over the namespace's gateways, through the operator's `GatewayAdmin`."""

    def __init__(self, nodes: list[NamespaceNode], access: drain.AdminAccess,
                 dispatcher: NodeDispatcher) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.admin = drain.GatewayAdmin()
        self.access = access
        self.dispatcher = dispatcher
        self.versions = dict.fromkeys(self.nodes, "v1")
        self.draining: dict[str, float] = {}
        self.drained: dict[str, int] = {}  # connections a gateway held when told to drain

    async def expected(self) -> int:
        return len(self.nodes)

    async def gateways(self) -> list[drain.Gateway]:
        out = []
        for i, (name, node) in enumerate(self.nodes.items()):
            count = await self.admin.connections(node.admin_url, self.access)
            out.append(drain.Gateway(
                name=name, version=self.versions[name], ready=node.alive and count is not None
                and name not in self.draining, connections=count or 0,
                draining_since=self.draining.get(name), ordinal=i))
        return out

    async def start_drain(self, name: str, rate: float, deadline_s: float) -> None:
        self.dispatcher.draining.add(name)
        answer = await self.admin.drain(self.nodes[name].admin_url, rate, deadline_s,
                                        self.access)
        self.drained[name] = int(answer["connections"])  # type: ignore[call-overload]
        self.draining[name] = time.time()

    async def replace(self, name: str, version: str) -> None:
        node = self.nodes[name]
        await asyncio.to_thread(node.stop)
        await asyncio.to_thread(node.start)
        self.draining.pop(name, None)
        self.dispatcher.draining.discard(name)
        self.dispatcher.upgraded.add(name)
        self.versions[name] = version


@pytest.fixture
def namespace_net() -> Iterator[VethNamespace]:
    why = can_make_namespaces()
    if why:
        pytest.skip(why)
    with veth_namespace() as ns:
        yield ns


@pytest.fixture
def nodes(namespace_net: VethNamespace, tmp_path: Path) -> Iterator[list[NamespaceNode]]:
    separate = _separate_admin_port()
    out = []
    for i in range(3):
        http = 18080 + 10 * i
        out.append(NamespaceNode(
            f"gw-{i}", namespace_net, tmp_path, http, http + 1, http + 2 if separate else http,
            {"CHATPLANE_TOKEN_SECRET": TOKEN_KEY, "CHATPLANE_ADMIN_SECRET": ADMIN_SECRET,
             "CHATPLANE_SQLITE_SYNCHRONOUS": "NORMAL"}))
    try:
        for node in out:
            node.start()
        yield out
    finally:
        for node in out:
            node.stop()


def _cluster(nodes: list[NamespaceNode]) -> api.ChatCluster:
    """The ChatCluster whose pods these are: the operator dials `spec.ports.admin`."""
    body = cluster_body(regions=("eu",))
    body["spec"]["ports"] = {"http": nodes[0].http_port, "tcp": nodes[0].tcp_port,
                             "admin": nodes[0].admin_port}
    return api.parse(body)


async def _connect(nodes: list[NamespaceNode], dispatcher: NodeDispatcher) -> list[RawClient]:
    signer = TokenSigner(TOKEN_KEY)
    clients = [RawClient(dispatcher, f"n{i}", signer.mint(f"n{i}", "d")) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    await asyncio.wait_for(asyncio.gather(*(c.resumed.wait() for c in clients)), 60)
    return clients


def _ready(node: NamespaceNode) -> bool:
    url = f"http://{node.ns.ip}:{node.http_port}/readyz"
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


async def _held(admin: drain.GatewayAdmin, nodes: list[NamespaceNode],
                access: drain.AdminAccess) -> dict[str, int | None]:
    return {n.name: await admin.connections(n.admin_url, access) for n in nodes}


async def test_drain_from_a_non_loopback_address_needs_the_admin_secret(
    nodes: list[NamespaceNode],
) -> None:
    cluster = _cluster(nodes)
    access = counting.admin_access(SecretReader(cluster), cluster)  # type: ignore[arg-type]
    assert access.secret == ADMIN_SECRET
    url = f"http://{nodes[0].ns.ip}:{cluster.ports.admin}"
    assert url == nodes[0].admin_url and not url.startswith("http://127.")
    dispatcher = NodeDispatcher(nodes)
    clients = await _connect(nodes, dispatcher)
    admin = drain.GatewayAdmin()
    try:
        before = await _held(admin, nodes, access)
        assert sum(n or 0 for n in before.values()) == CLIENTS
        for refused in (drain.AdminAccess(), drain.AdminAccess(secret="not-the-secret")):
            with pytest.raises(drain.AdminRefused, match="HTTP 401"):
                await admin.drain(url, RATE, DEADLINE_S, refused)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(_ready, nodes[0])  # not draining
        assert await _held(admin, nodes, access) == before  # nobody was sent away

        dispatcher.draining.add("gw-0")
        answer = await admin.drain(url, RATE, DEADLINE_S, access)
        assert answer["draining"] is True
        began = time.monotonic()
        while await admin.connections(url, access):
            assert time.monotonic() - began < 20, "gw-0 did not empty"
            await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


async def test_a_rollout_of_three_gateways_takes_connections_over_rate(
    nodes: list[NamespaceNode],
) -> None:
    cluster = _cluster(nodes)
    access = counting.admin_access(SecretReader(cluster), cluster)  # type: ignore[arg-type]
    dispatcher = NodeDispatcher(nodes)
    clients = await _connect(nodes, dispatcher)
    fleet = NamespaceFleet(nodes, access, dispatcher)
    policy = drain.Policy(rate=RATE, deadline_s=DEADLINE_S, max_unavailable=1,
                          ready_timeout_s=30)
    try:
        outcome = await drain.Orchestrator(fleet, "v2", policy).run(timeout_s=120, poll_s=0.1)
        await asyncio.wait_for(asyncio.gather(*(c.resumed.wait() for c in clients)), 30)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    assert outcome.progress.done and outcome.progress.updated == 3
    moved = sum(fleet.drained.values())
    assert moved >= CLIENTS  # each gateway was drained holding its clients
    reasons = [message for reason, message in outcome.events if reason == "GatewayReplaced"]
    assert len(reasons) == 3 and all("(drained, 0 connections left)" in m for m in reasons)
    paced = moved / RATE
    print(f"rollout of 3 gateways: {moved} connections moved at {RATE:g}/s "
          f"(≈{paced:.1f}s) took {outcome.seconds:.1f}s; drain deadline {DEADLINE_S:g}s each")
    assert outcome.seconds >= 0.7 * paced  # the drains were paced at the rate
    assert outcome.seconds < DEADLINE_S / 2  # not the deadline (3 x 60 s if refused)


def test_the_admin_access_comes_from_the_generated_secret() -> None:
    cluster = api.parse(cluster_body(regions=("eu",)))
    secret = config.build_generated_secret(cluster, token=b"t" * 16, admin=b"s3cret")
    reader = SecretReader(cluster)
    reader.secret = secret
    access = counting.admin_access(reader, cluster)  # type: ignore[arg-type]
    assert access.headers() == {"Authorization": "Bearer s3cret"}
    assert base64.b64decode(secret["data"]["admin"]) == b"s3cret"


class PatchRecorder(SecretReader):
    """The API calls `fleet_kube.KubeFleet` makes: the Secret read, the pod patches."""

    def __init__(self, cluster: api.ChatCluster) -> None:
        super().__init__(cluster)
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def merge_patch(self, kind: str, namespace: str, name: str,
                    patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((name, patch))
        return {}


async def test_the_operators_kube_fleet_drains_a_pod_at_its_ip(
    nodes: list[NamespaceNode],
) -> None:
    """The rollout's own code path (`KubeFleet.start_drain`, as a reconcile pass runs it):
    the pod's IP and `ports.admin` make the URL, the generated Secret the credential."""
    from chatplane_operator import fleet_kube, podreading

    cluster = _cluster(nodes)
    node = nodes[0]
    pod = {"metadata": {"name": "chat-eu-gateway-0", "annotations": {}},
           "status": {"phase": "Running", "podIP": node.ns.ip}}
    reads = podreading.RegionReads(gateways=(pod,), connections={"chat-eu-gateway-0": 0})
    dispatcher = NodeDispatcher(nodes)
    clients = await _connect(nodes, dispatcher)
    admin = drain.GatewayAdmin()
    try:
        held = await admin.connections(node.admin_url, drain.AdminAccess(ADMIN_SECRET))
        assert held
        api_calls = PatchRecorder(cluster)
        refused = fleet_kube.KubeFleet(api_calls, cluster, cluster.regions[0],  # type: ignore[arg-type]
                                       admin, reads, drain.AdminAccess("wrong"))
        await refused.start_drain("chat-eu-gateway-0", RATE, DEADLINE_S)
        assert await asyncio.to_thread(_ready, node)  # refused: not draining
        access = counting.admin_access(api_calls, cluster)  # type: ignore[arg-type]
        fleet = fleet_kube.KubeFleet(api_calls, cluster, cluster.regions[0],  # type: ignore[arg-type]
                                     admin, reads, access)
        dispatcher.draining.add(node.name)
        await fleet.start_drain("chat-eu-gateway-0", RATE, DEADLINE_S)
        began = time.monotonic()
        while await admin.connections(node.admin_url, access):
            assert time.monotonic() - began < 20, "the pod did not empty"
            await asyncio.sleep(0.1)
        took = time.monotonic() - began
        assert took < held / RATE + 5
        assert [name for name, _ in api_calls.patches] == ["chat-eu-gateway-0"] * 2
        assert "chatplane.dev/draining-since" in api_calls.patches[-1][1]["metadata"]["annotations"]
    finally:
        await asyncio.gather(*(c.close() for c in clients))
