"""CQL over TLS from the settings: CHATPLANE_CQL_TLS_CA/CERT/KEY become the driver's
`ssl_context`, which verifies the node (its CA, the address it is dialed at) and
presents the client certificate; checked by a real TLS handshake against a local
TLS server that requires client certificates (no Cassandra needed)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from chatplane import settings as settings_mod
from chatplane.storage.base import StorageError
from tests.support.certs import TestCa

pytest.importorskip("cassandra")
from chatplane.storage import cql, scylla


def _env(ca: TestCa, with_client_cert: bool) -> dict[str, str]:
    env = {"CHATPLANE_STORAGE": "scylla", "CHATPLANE_CQL_HOSTS": "127.0.0.1",
           "CHATPLANE_CQL_TLS_CA": str(ca.path)}
    if with_client_cert:
        pair = ca.issue("chatplane-im", dns=("im",))
        env |= {"CHATPLANE_CQL_TLS_CERT": str(pair.cert), "CHATPLANE_CQL_TLS_KEY": str(pair.key)}
    return env


async def _handshake(client: ssl.SSLContext, ca: TestCa) -> bytes:
    """What a TLS server on 127.0.0.1 that requires a client certificate from `ca`
    answers (b"ok"; b"" when it refused the client's certificate after the handshake,
    as TLS 1.3 does)."""
    node = ca.issue("cassandra", ips=("127.0.0.1",))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.path))
    server_ctx.load_cert_chain(node.cert, node.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        # as the driver wraps: server_hostname = the node's address
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                       server_hostname="127.0.0.1")
        try:
            return await reader.read(2)
        except (ssl.SSLError, ConnectionError):
            return b""
        finally:
            writer.close()
    finally:
        server.close()


async def test_the_driver_context_is_built_from_the_files(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki", "cql-ca")
    config = scylla.cql_settings(settings_mod.load(environ=_env(ca, with_client_cert=True)))
    context = cql.ssl_context(config)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "cql-ca"),),)]
    assert await _handshake(context, ca) == b"ok"  # the client certificate was presented
    assert cql._build_cluster(config).ssl_context is not None  # handed to the driver


async def test_without_a_client_cert_the_node_sees_none(tmp_path: Path) -> None:
    ca = TestCa(tmp_path / "pki", "cql-ca")
    config = scylla.cql_settings(settings_mod.load(environ=_env(ca, with_client_cert=False)))
    context = cql.ssl_context(config)
    assert context is not None
    # this server requires one (whether to is the node's choice): it refuses
    assert await _handshake(context, ca) == b""


async def test_another_ca_fails_the_handshake(tmp_path: Path) -> None:
    ca, other = TestCa(tmp_path / "pki", "cql-ca"), TestCa(tmp_path / "other", "other-ca")
    config = scylla.cql_settings(settings_mod.load(environ=_env(other, with_client_cert=True)))
    context = cql.ssl_context(config)
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(context, ca)


def test_no_ca_no_tls_and_bad_files_fail_with_one_line(tmp_path: Path) -> None:
    plain = scylla.cql_settings(settings_mod.load(environ={"CHATPLANE_CQL_HOSTS": "127.0.0.1"}))
    assert cql.ssl_context(plain) is None
    with pytest.raises(settings_mod.SettingsError, match="CHATPLANE_CQL_TLS_CA"):
        settings_mod.load(environ={"CHATPLANE_CQL_TLS_CA": str(tmp_path / "missing.pem")})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(StorageError, match="CQL TLS files"):
        cql.ssl_context(cql.CqlSettings(tls_ca=str(garbage)))
