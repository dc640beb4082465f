"""Shared fixtures: a real `chatplane up` process, tokens, the chaos proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from tests.support.proxy import ChaosProxy
from tests.support.server import ServerProcess

pytest_plugins = ["tests.services"]  # real Redis and CQL servers


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def signer(data_dir: Path) -> TokenSigner:
    return TokenSigner.from_data_dir(data_dir)


@pytest.fixture
def server(data_dir: Path, signer: TokenSigner) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def proxied_server(data_dir: Path,
                         signer: TokenSigner) -> AsyncIterator[tuple[ServerProcess, ChaosProxy]]:
    """A server whose dispatch sends clients through a ChaosProxy."""
    proc = ServerProcess(data_dir, tcp=False)
    proxy = ChaosProxy("127.0.0.1", proc.port)
    await proxy.start()
    proc.env["CHATPLANE_GATEWAY_ADVERTISE_URL"] = f"ws://127.0.0.1:{proxy.port}/ws"
    proc.start()
    yield proc, proxy
    await proxy.stop()
    proc.stop()
