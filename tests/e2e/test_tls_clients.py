"""Client-facing TLS on a real `chatplane up --tls-cert --tls-key`: WSS and TCP+TLS
chat exactly once through the SDK, the SDK refuses a certificate it cannot verify,
and a replaced certificate file is served to new connections without a restart
while the sessions already open carry on."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from chatplane.client.links import open_link, tls_context
from tests.support.certs import Pair, TestCa, fingerprint
from tests.support.server import ServerProcess
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow


class TlsServer(ServerProcess):
    pair: Pair

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


@pytest.fixture
def tls_server(tmp_path: Path, ca: TestCa) -> Iterator[TlsServer]:
    pair = ca.web()
    server = TlsServer(tmp_path / "data", extra_args=[
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)])
    server.pair = pair
    server.start()
    yield server
    server.stop()


async def _device(server: TlsServer, ca: TestCa, user: str, device: str, transport: str,
                  checker: DeliveryChecker) -> Device:
    token = TokenSigner.from_data_dir(server.data_dir).mint(user, device)
    client = Client(server.url, token, transport=transport, ca=str(ca.path))
    await client.connect()
    d = Device(client, user, device, checker)
    d.start()
    return d


async def _served_fingerprint(port: int, ca: TestCa) -> bytes:
    """The certificate a new TLS connection to `port` is given (verified against `ca`)."""
    context = ssl.create_default_context(cafile=str(ca.path))
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256())


async def test_wss_and_tcp_tls_chat_exactly_once(tls_server: TlsServer, ca: TestCa) -> None:
    checker = DeliveryChecker()
    alice = await _device(tls_server, ca, "alice", "phone", "ws", checker)
    bob = await _device(tls_server, ca, "bob", "laptop", "tcp", checker)
    try:
        conv = await alice.client.direct("bob")
        assert conv == await bob.client.direct("alice")
        checker.add_member(conv, "alice")
        checker.add_member(conv, "bob")
        a_seqs, b_seqs = await asyncio.gather(send_many(alice, conv, 100, "a"),
                                              send_many(bob, conv, 100, "b"))
        await wait_until_received([alice, bob], 200, timeout_s=30)
        await asyncio.sleep(0.3)  # a duplicate would arrive now
        assert sorted(a_seqs + b_seqs) == list(range(1, 201))
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary()
        # what dispatch hands out says TLS
        async with aiohttp.ClientSession() as http, http.get(
                f"{tls_server.url}/v1/dispatch?uid=alice",
                ssl=ssl.create_default_context(cafile=str(ca.path))) as response:
            [endpoint] = (await response.json())["endpoints"]
        assert endpoint["ws"].startswith("wss://") and endpoint["tcp"].startswith("tcps://")
    finally:
        await alice.stop()
        await bob.stop()


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_the_sdk_refuses_an_untrusted_certificate(tls_server: TlsServer, tmp_path: Path,
                                                        transport: str) -> None:
    token = TokenSigner.from_data_dir(tls_server.data_dir).mint("alice", "phone")
    other = TestCa(tmp_path / "other", "some-other-ca")
    for ca in (None, str(other.path)):  # the system CAs, then a CA that did not sign it
        client = Client(tls_server.url, token, transport=transport, ca=ca)
        # fails at once (no retries: a retry cannot make the certificate trusted)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.connect(timeout_s=10)
        await client.close()
    # the TCP+TLS link itself verifies too (dispatch aside)
    with pytest.raises(ssl.SSLCertVerificationError):
        async with aiohttp.ClientSession() as http:
            await open_link(http, {"tcp": f"tcps://127.0.0.1:{tls_server.tcp_port}"}, "tcp",
                            65536, tls=tls_context(str(other.path)))


async def test_a_replaced_certificate_is_served_without_a_restart(
        tls_server: TlsServer, ca: TestCa) -> None:
    checker = DeliveryChecker()
    first = tls_server.pair  # the files the server was started with
    before = await _served_fingerprint(tls_server.port, ca)
    assert before == fingerprint(first.cert)
    alice = await _device(tls_server, ca, "alice", "phone", "ws", checker)
    bob = await _device(tls_server, ca, "bob", "laptop", "tcp", checker)
    conv = await alice.client.direct("bob")
    checker.add_member(conv, "alice")
    checker.add_member(conv, "bob")
    try:
        # a renewal: new files written beside, then moved over the old ones
        renewed = ca.web("renewed")
        shutil.copy(renewed.key, first.key.with_suffix(".tmp"))
        os.replace(first.key.with_suffix(".tmp"), first.key)
        shutil.copy(renewed.cert, first.cert.with_suffix(".tmp"))
        os.replace(first.cert.with_suffix(".tmp"), first.cert)
        want = fingerprint(renewed.cert)
        for _ in range(100):  # the server looks at most once a second
            if await _served_fingerprint(tls_server.port, ca) == want:
                break
            await asyncio.sleep(0.1)
        assert await _served_fingerprint(tls_server.port, ca) == want
        assert await _served_fingerprint(tls_server.tcp_port, ca) == want
        # the sessions opened on the old certificate still chat, without a reconnect
        await asyncio.gather(send_many(alice, conv, 20, "a"), send_many(bob, conv, 20, "b"))
        await wait_until_received([alice, bob], 40, timeout_s=20)
        assert alice.client.reconnects == 0 and bob.client.reconnects == 0
        # and a new client gets in over the new one
        carol = await _device(tls_server, ca, "carol", "phone", "tcp", checker)
        await carol.stop()
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary()
    finally:
        await alice.stop()
        await bob.stop()


async def test_an_https_dispatch_offering_plain_gateways_is_refused(
        tmp_path: Path, ca: TestCa, caplog: pytest.LogCaptureFixture) -> None:
    """A rewritten (or misconfigured) dispatch answer must not make the SDK send its
    token in clear: from an https:// dispatch only wss:// and tcps:// are used."""
    pair = ca.web()
    server = TlsServer(tmp_path / "data", tcp=False, extra_args=[
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)],
        env={"CHATPLANE_GATEWAY_ADVERTISE_URL": "ws://127.0.0.1:1/ws"})
    server.start()
    try:
        token = TokenSigner.from_data_dir(server.data_dir).mint("alice", "phone")
        client = Client(server.url, token, ca=str(ca.path), backoff_max_s=0.2)
        with caplog.at_level(logging.INFO, logger="chatplane.client"), \
                pytest.raises(TimeoutError):
            await client.connect(timeout_s=2)
        await client.close()
        assert "refused a plain-text gateway offered by an https dispatch" in caplog.text
    finally:
        server.stop()


async def test_chatplane_chat_with_ca_over_https(tls_server: TlsServer, ca: TestCa) -> None:
    from tests.test_chat import Chat

    alice = await Chat.start(tls_server, "alice", "--ca", str(ca.path))
    bob = await Chat.start(tls_server, "bob", "--ca", str(ca.path), "--transport", "tcp")
    try:
        await alice.type("/dm bob", "hi over tls")
        await bob.expect("alice: hi over tls")
        assert await alice.quit() == 0
        assert await bob.quit() == 0
    finally:
        alice.kill()
        bob.kill()


async def test_bench_handshakes_counts_full_handshakes(tls_server: TlsServer, ca: TestCa) -> None:
    from chatplane.bench import handshakes

    for port_of in ("tcp", "http"):
        result = await handshakes.run(tls_server.url, str(ca.path), 1.0, 2, port_of)
        assert result["handshakes"] > 0 and result["failures"] == 0, result
        assert result["server_cpu_us_per_handshake"] is not None
