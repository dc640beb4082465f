"""Tier certificates renewed in place (as the operator rotates them before expiry):
a gRPC server hands its new certificate to new connections without a restart, keeps
the old one while the renewal is half written, and a caller's channels pick up its
own new certificate (seen by the server: the renewed one names another role)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from pathlib import Path

import grpc

from chatplane.rpc import serving
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.support.certs import Pair, TestCa, fingerprint


class Gateway(sgrpc.GatewayServicer):
    async def Kick(self, request: spb.KickRequest,
                   context: grpc.aio.ServicerContext) -> spb.KickReply:
        return spb.KickReply()


def _replace(src: Path, dst: Path) -> None:
    shutil.copy(src, dst.with_suffix(".tmp"))
    os.replace(dst.with_suffix(".tmp"), dst)


def _files(ca: TestCa, pair: Pair) -> tuple[str, ...]:
    return (str(ca.path), str(pair.cert), str(pair.key), "")


async def _served(port: int, ca: TestCa, client: Pair) -> bytes:
    """The certificate a new connection to the gRPC port gets (a TLS handshake as a
    gRPC client does it: ALPN h2, a client certificate)."""
    context = ssl.create_default_context(cafile=str(ca.path))
    context.check_hostname = False
    context.load_cert_chain(client.cert, client.key)
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                              server_hostname="gateway")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())


async def _eventually(check: object, want: object, what: str, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s  # generous: a loaded machine (two test workers)
    while await check() != want:  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.1)


async def test_server_and_caller_certificates_renewed_without_a_restart(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "ca")
    served, caller = ca.tier("gateway"), ca.tier("state")
    security = LinkSecurity.from_files("gateway", _files(ca, served), frozenset())
    server, port = await serving.start_grpc(
        "127.0.0.1", 0, lambda s: sgrpc.add_GatewayServicer_to_server(Gateway(), s), security)
    peers = Peers(2.0, LinkSecurity.from_files("state", _files(ca, caller), frozenset()))
    address = f"127.0.0.1:{port}"

    async def kick() -> grpc.StatusCode:
        try:
            await sgrpc.GatewayStub(peers.channel(address, "gateway")).Kick(
                spb.KickRequest(reason="t"), timeout=3)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    try:
        assert await kick() == grpc.StatusCode.OK
        assert await _served(port, ca, caller) == fingerprint(served.cert)

        # half a renewal (a new certificate, the old key): the old pair stays in service
        renewed = ca.issue("gateway", dns=("gateway",), file_stem="renewed-gateway")
        _replace(renewed.cert, served.cert)
        await asyncio.sleep(1.2)
        assert await _served(port, ca, caller) != fingerprint(renewed.cert)
        assert await kick() == grpc.StatusCode.OK
        # the key follows: new connections get the renewed certificate
        _replace(renewed.key, served.key)
        want = fingerprint(renewed.cert)
        await _eventually(lambda: _served(port, ca, caller), want, "the renewed server cert")
        assert await kick() == grpc.StatusCode.OK  # the caller's open channel carries on

        # the caller's files change: its next calls go out on new channels with the new
        # certificate (here one that names the wrong role, so the server's answer shows it)
        wrong = ca.tier("ipconf")
        _replace(wrong.key, caller.key)
        _replace(wrong.cert, caller.cert)
        await _eventually(kick, grpc.StatusCode.PERMISSION_DENIED, "the caller's new cert")
    finally:
        await peers.close()
        await server.stop(None)


def test_a_cert_check_follows_the_reloaded_cas(tmp_path: Path) -> None:
    role = "im"
    cluster, peer = TestCa(tmp_path / "c", "cluster-ca"), TestCa(tmp_path / "p", "peer-ca")
    pair = cluster.tier(role)
    paths = (str(cluster.path), str(pair.cert), str(pair.key), str(peer.path))
    security = LinkSecurity.from_files(role, paths, frozenset({"us"}))
    check = security.cert_check()
    assert check is not None and check.peer_ca_pem == peer.path.read_bytes()
    newer = TestCa(tmp_path / "p2", "peer-ca-2")
    _replace(newer.path, peer.path)
    fresh = security.reloaded()
    assert fresh is not None and fresh.cert_check() is not None
    assert fresh.cert_check().peer_ca_pem == newer.path.read_bytes()  # type: ignore[union-attr]
    assert fresh.reloaded() is None  # nothing changed since
