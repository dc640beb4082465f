"""Who may call a tier's gRPC port: real gRPC servers (an im with real storage, a
gateway, a region link) behind the caller gate, called the way an attacker
would: with no certificate, another role's certificate, a certificate from
another CA, no credential or a forged one on a plain link."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from chatplane.auth import TokenSigner
from chatplane.im.app import ImServicer
from chatplane.im.service import ImService
from chatplane.regions import links as region_links
from chatplane.routes.memory import MemoryRoutes
from chatplane.rpc import serving
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import CHANNEL_OPTIONS
from chatplane.settings import Limits
from chatplane.state.service import StateService
from chatplane.storage.sqlite import SqliteStorage
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.support.certs import Pair, TestCa

Register = Callable[[grpc.aio.Server], None]


def _mtls(role: str, ca: TestCa, pair: Pair, peer_ca: TestCa | None = None,
          peers: frozenset[str] = frozenset()) -> LinkSecurity:
    return LinkSecurity(role, ca.path.read_bytes(), pair.cert.read_bytes(), pair.key.read_bytes(),
                        (peer_ca or ca).path.read_bytes(), peers=peers)


def _handle() -> spb.ClientRequest:
    frame = pb.Frame(id=1, open_direct=pb.OpenDirect(peer_user_id="bob"))
    return spb.ClientRequest(user_id="alice", device_id="p", frame=frame.SerializeToString())


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def im_register(tmp_path: Path) -> AsyncIterator[Register]:
    storage = SqliteStorage(tmp_path / "im.db")
    await storage.open()
    servicer = ImServicer(ImService(storage, StateService(MemoryRoutes(), "gw"), Limits()))
    yield lambda s: sgrpc.add_ImServicer_to_server(servicer, s)
    await storage.close()


class Gateway(sgrpc.GatewayServicer):
    async def Kick(self, request: spb.KickRequest,
                   context: grpc.aio.ServicerContext) -> spb.KickReply:
        return spb.KickReply()


async def _serve(register: Register, security: LinkSecurity) -> tuple[grpc.aio.Server, str]:
    server, port = await serving.start_grpc("127.0.0.1", 0, register, security)
    return server, f"127.0.0.1:{port}"


async def test_im_handle_over_mtls_only_from_a_gateway_of_this_cluster(
        tmp_path: Path, im_register: Register) -> None:
    ca, other = TestCa(tmp_path / "ca"), TestCa(tmp_path / "other", "other-cluster-ca")
    server, address = await _serve(im_register, _mtls("im", ca, ca.tier("im")))
    try:
        async def handle(security: LinkSecurity) -> grpc.StatusCode:
            async with security.open_channel(address, "im", CHANNEL_OPTIONS) as channel:
                return await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3))

        assert await handle(_mtls("gateway", ca, ca.tier("gateway"))) == grpc.StatusCode.OK
        # another role's certificate from the same CA: refused by the table
        assert await handle(_mtls("ipconf", ca, ca.tier("ipconf"))) == \
            grpc.StatusCode.PERMISSION_DENIED
        # a "gateway" certificate another CA signed: the handshake itself fails
        forged = _mtls("gateway", ca, other.tier("gateway"))
        assert await handle(forged) == grpc.StatusCode.UNAVAILABLE
        # no client certificate at all
        creds = grpc.ssl_channel_credentials(root_certificates=ca.path.read_bytes())
        async with grpc.aio.secure_channel(
                address, creds, options=[("grpc.ssl_target_name_override", "im")]) as channel:
            assert await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3)) == \
                grpc.StatusCode.UNAVAILABLE
        # and plain text to the TLS port
        async with grpc.aio.insecure_channel(address) as channel:
            assert await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3)) == \
                grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def test_im_handle_on_a_plain_link_needs_the_gateway_credential(
        im_register: Register) -> None:
    server, address = await _serve(im_register, LinkSecurity("im", secret="links-secret"))
    try:
        async def handle(channel: grpc.aio.Channel) -> grpc.StatusCode:
            async with channel:
                return await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3))

        gateway = LinkSecurity("gateway", secret="links-secret")
        assert await handle(gateway.open_channel(address, "im", [])) == grpc.StatusCode.OK
        assert await handle(grpc.aio.insecure_channel(address)) == \
            grpc.StatusCode.UNAUTHENTICATED
        guessed = LinkSecurity("gateway", secret="a guess")
        assert await handle(guessed.open_channel(address, "im", [])) == \
            grpc.StatusCode.UNAUTHENTICATED
        ipconf = LinkSecurity("ipconf", secret="links-secret")
        assert await handle(ipconf.open_channel(address, "im", [])) == \
            grpc.StatusCode.PERMISSION_DENIED
        # a claimed role with another role's proof
        forged = grpc.aio.insecure_channel(address)
        async with forged:
            proof = dict(ipconf.gate()._proofs.items())  # role proofs of the real secret
            ipconf_proof = next(p for p, r in proof.items() if r == "ipconf")
            call = sgrpc.ImStub(forged).Handle(_handle(), timeout=3, metadata=(
                ("x-chatplane-role", "gateway"), ("x-chatplane-role-proof", ipconf_proof)))
            assert await _code(call) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)


@pytest.mark.parametrize("tls", [True, False])
async def test_gateway_kick_only_from_state(tmp_path: Path, tls: bool) -> None:
    ca = TestCa(tmp_path / "ca")

    def security(role: str) -> LinkSecurity:
        return _mtls(role, ca, ca.tier(role)) if tls else LinkSecurity(role, secret="s")

    server, address = await _serve(lambda s: sgrpc.add_GatewayServicer_to_server(Gateway(), s),
                                   security("gateway"))
    try:
        for role, want in (("state", grpc.StatusCode.OK),
                           ("im", grpc.StatusCode.PERMISSION_DENIED),
                           ("gateway", grpc.StatusCode.PERMISSION_DENIED),
                           ("ipconf", grpc.StatusCode.PERMISSION_DENIED)):
            async with security(role).open_channel(address, "gateway", []) as channel:
                kick = sgrpc.GatewayStub(channel).Kick(
                    spb.KickRequest(reason="test"), timeout=3)
                assert await _code(kick) == want, role
    finally:
        await server.stop(None)


def _region_server(region: str) -> region_links.PeerProber:
    me = region_links.Identity(region, "c", f"{region}-1", TokenSigner("k" * 32).peer_proof)
    return region_links.PeerProber(me, [], 1.0, 1.0, LinkSecurity("im", secret="s"))


async def _hello(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        return await _code(rgrpc.RegionStub(channel).Hello(
            rpb.HelloRequest(region="us", nonce=b"n" * 16), timeout=3))


async def test_region_hello_only_from_listed_peers_signed_by_the_peer_ca(
        tmp_path: Path, im_register: Register) -> None:
    cluster_ca = TestCa(tmp_path / "cluster", "eu-cluster-ca")
    peer_ca = TestCa(tmp_path / "peers", "peer-regions-ca")
    stranger_ca = TestCa(tmp_path / "stranger", "another-cluster-ca")
    prober = _region_server("eu")
    eu = _mtls("im", cluster_ca, cluster_ca.tier("im", "region.eu"), peer_ca,
               peers=frozenset({"us"}))

    def both(server: grpc.aio.Server) -> None:
        im_register(server)
        region_links.add_to_server(prober, server)

    server, address = await _serve(both, eu)
    try:
        def caller(ca: TestCa, cn: str) -> LinkSecurity:
            # a peer region's identity signed by `ca`, trusting eu's server certificate
            pair = ca.issue(cn, dns=("im", cn))
            return LinkSecurity("im", cluster_ca.path.read_bytes(), pair.cert.read_bytes(),
                                pair.key.read_bytes())

        us = caller(peer_ca, "region.us")
        assert await _hello(us.open_channel(address, "im", [])) == grpc.StatusCode.OK
        ap = caller(peer_ca, "region.ap")  # the right CA, but not a listed peer
        assert await _hello(ap.open_channel(address, "im", [])) == \
            grpc.StatusCode.PERMISSION_DENIED
        # another cluster's CA: refused at the handshake
        stranger = caller(stranger_ca, "region.us")
        assert await _hello(stranger.open_channel(address, "im", [])) == \
            grpc.StatusCode.UNAVAILABLE
        # the peer CA cannot mint this cluster's roles: a "gateway" it signed proves nothing
        fake_gateway = caller(peer_ca, "gateway")
        async with fake_gateway.open_channel(address, "im", []) as channel:
            assert await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3)) == \
                grpc.StatusCode.UNAUTHENTICATED
        # nor may a region call Im
        async with us.open_channel(address, "im", []) as channel:
            assert await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3)) == \
                grpc.StatusCode.PERMISSION_DENIED
        # while this cluster's own gateway still may
        own = _mtls("gateway", cluster_ca, cluster_ca.tier("gateway"), peer_ca)
        async with own.open_channel(address, "im", []) as channel:
            assert await _code(sgrpc.ImStub(channel).Handle(_handle(), timeout=3)) == \
                grpc.StatusCode.OK
    finally:
        await server.stop(None)


async def test_region_hello_on_a_plain_link_only_from_listed_names() -> None:
    prober = _region_server("eu")
    security = dataclasses.replace(LinkSecurity("im", secret="s"), peers=frozenset({"us"}))
    server, address = await _serve(lambda s: region_links.add_to_server(prober, s), security)
    try:
        us = LinkSecurity("im", secret="other region's").for_peer_regions("us")
        assert await _hello(us.open_channel(address, "im", [])) == grpc.StatusCode.OK
        ap = LinkSecurity("im", secret="x").for_peer_regions("ap")
        assert await _hello(ap.open_channel(address, "im", [])) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert await _hello(grpc.aio.insecure_channel(address)) == \
            grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
