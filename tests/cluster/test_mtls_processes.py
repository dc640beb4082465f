"""Mutual TLS between real processes: a cluster whose tiers each hold their role's
certificate (CHATPLANE_GRPC_TLS_*) and whose gateways serve clients WSS and TCP+TLS
chats exactly once, while its im refuses a caller that is not a gateway; and
regions (`chatplane up` with peers) see each other over mTLS with a peer CA, and
refuse a peer that presents another cluster's CA."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import redis

from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from chatplane.client.links import tls_context
from chatplane.cluster import Cluster
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.cluster.conftest import FAST
from tests.services import RedisService
from tests.support.certs import TestCa
from tests.support.regions import RegionProcess, peer_each_other, wait_for
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _grpc_env(ca: TestCa, role: str, *extra_dns: str) -> dict[str, str]:
    pair = ca.tier(role, *extra_dns)
    return {"CHATPLANE_GRPC_TLS_CA": str(ca.path), "CHATPLANE_GRPC_TLS_CERT": str(pair.cert),
            "CHATPLANE_GRPC_TLS_KEY": str(pair.key)}


@pytest.fixture
def mtls_cluster(tmp_path: Path, redis_server: RedisService) -> Iterator[tuple[Cluster, TestCa]]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    client.flushall()
    client.close()
    ca = TestCa(tmp_path / "pki", "cluster-ca")
    cluster = Cluster(tmp_path / "cluster", gateways=2, ims=2, redis_url=redis_server.url,
                      env=FAST)
    web = ca.web()
    for member in cluster.members.values():
        member.env.update(_grpc_env(ca, member.kind))
        if member.kind in ("gateway", "ipconf"):  # clients: HTTPS dispatch, WSS / TCP+TLS
            member.env.update({"CHATPLANE_TLS_CERT": str(web.cert),
                               "CHATPLANE_TLS_KEY": str(web.key)})
    try:
        cluster.start(timeout_s=60)
        yield cluster, ca
    finally:
        cluster.stop()


async def test_a_cluster_on_mtls_chats_exactly_once_and_its_im_refuses_strangers(
        mtls_cluster: tuple[Cluster, TestCa], tmp_path: Path) -> None:
    cluster, ca = mtls_cluster
    dispatch = f"https://127.0.0.1:{cluster.members['ipconf'].http_port}"
    checker = DeliveryChecker()
    devices: list[Device] = []
    try:
        seqs = []
        for i, transport in enumerate(("ws", "tcp", "ws")):
            pair = []
            for user in (f"ma{i}", f"mb{i}"):
                client = Client(dispatch, cluster.signer.mint(user, "phone"),
                                transport=transport, ca=str(ca.path))
                await client.connect()
                pair.append(Device(client, user, "phone", checker))
                pair[-1].start()
            devices += pair
            conv = await pair[0].client.direct(pair[1].user)
            checker.add_member(conv, pair[0].user)
            checker.add_member(conv, pair[1].user)
            seqs += await asyncio.gather(send_many(pair[0], conv, 30, "a"),
                                         send_many(pair[1], conv, 30, "b"))
        await wait_until_received(devices, 60, timeout_s=30)
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        assert all(sorted(a + b) == list(range(1, 61)) for a, b in zip(seqs[::2], seqs[1::2], strict=True))
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary()
        async with aiohttp.ClientSession() as http, http.get(
                dispatch + "/v1/dispatch?uid=x", ssl=tls_context(str(ca.path))) as reply:
            endpoints = (await reply.json())["endpoints"]
        assert len(endpoints) == 2 and all(
            e["ws"].startswith("wss://") and e["tcp"].startswith("tcps://") for e in endpoints)
    finally:
        for d in devices:
            await d.stop()

    im = cluster.members[cluster.names("im")[0]]
    address = f"127.0.0.1:{im.grpc_port}"
    frame = pb.Frame(id=1, history=pb.HistoryRequest(conversation_id="d:a:b", limit=10))
    request = spb.ClientRequest(user_id="victim", device_id="p", frame=frame.SerializeToString())

    async def handle(security: LinkSecurity) -> grpc.StatusCode:
        async with security.open_channel(address, "im", []) as channel:
            try:
                await sgrpc.ImStub(channel).Handle(request, timeout=3)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    def holding(signer: TestCa, role: str) -> LinkSecurity:
        pair = signer.tier(role)
        return LinkSecurity(role, ca.path.read_bytes(), pair.cert.read_bytes(),
                            pair.key.read_bytes())

    assert await handle(holding(ca, "ipconf")) == grpc.StatusCode.PERMISSION_DENIED
    other = TestCa(tmp_path / "other", "other-ca")
    assert await handle(holding(other, "gateway")) == grpc.StatusCode.UNAVAILABLE
    # plain text, with or without a (non-TLS) role credential
    assert await handle(LinkSecurity("gateway", secret="guess")) == grpc.StatusCode.UNAVAILABLE
    assert await handle(holding(ca, "gateway")) != grpc.StatusCode.UNAVAILABLE  # the control


def _region(tmp_path: Path, name: str, cluster_ca: TestCa, peer_ca: TestCa) -> RegionProcess:
    env = _grpc_env(cluster_ca, "im", f"region.{name}")
    env["CHATPLANE_PEER_TLS_CA"] = str(peer_ca.path)
    return RegionProcess(tmp_path / name, name, env=env)


def test_regions_on_mtls_and_a_peer_with_another_cluster_ca(tmp_path: Path) -> None:
    # eu and us are separate clusters, each with its own CA; each trusts the other's
    eu_ca, us_ca = TestCa(tmp_path / "eu-pki", "eu-ca"), TestCa(tmp_path / "us-pki", "us-ca")
    eu = _region(tmp_path, "eu", eu_ca, us_ca)
    us = _region(tmp_path, "us", us_ca, eu_ca)
    # "ap" is listed by nobody's CA: it presents a third cluster's CA and trusts eu's
    ap_ca = TestCa(tmp_path / "ap-pki", "ap-ca")
    ap = _region(tmp_path, "ap", ap_ca, eu_ca)
    peer_each_other(eu, us, ap)
    for region in (eu, us, ap):
        region.start()
    try:
        wait_for(lambda: eu.peers()["us"]["ok"] and us.peers()["eu"]["ok"], 30,
                 "eu and us see each other over mTLS")
        # ap's certificate does not chain to eu's peer CA: eu refuses it at the handshake
        refused = wait_for(lambda: (v := ap.peers()["eu"])["failures"] >= 2 and v, 30,
                           "ap's Hellos to eu fail")
        assert not refused["reachable"] and refused["error"].startswith("UNAVAILABLE"), refused
        # and eu does not trust ap's server certificate either
        seen = wait_for(lambda: (v := eu.peers()["ap"])["failures"] >= 2 and v, 30,
                        "eu's Hellos to ap fail")
        assert not seen["reachable"], seen
        assert eu.peers()["ap"]["heard_from_s_ago"] is None  # ap's Hello never got through
        assert eu.peers()["us"]["heard_from_s_ago"] is not None
    finally:
        for region in (eu, us, ap):
            region.stop()
