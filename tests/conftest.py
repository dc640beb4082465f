"""Shared fixtures: a real `chatplane up` process, tokens, the chaos proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from tests.support.proxy import ChaosProxy
from tests.support.server import ServerProcess

pytest_plugins = ["tests.services"]  # real Redis and CQL servers

# Groups that must run in one worker under pytest-xdist (`scripts/test` runs `-n 2 --dist
# loadgroup`), sent first because they are the longest: the CQL tests share one Cassandra,
# which some of them kill and restart; the node tests share one single-node cluster.
FIRST_GROUPS = ("node", "cql")


def _group(item: pytest.Item) -> str:
    if item.get_closest_marker("node") is not None:
        return "node"
    if "cql_server" in getattr(item, "fixturenames", ()):
        return "cql"
    return item.nodeid.split("::")[0]  # a file: its module fixtures start once


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("dist", "no") != "loadgroup" or not config.getoption("numprocesses", 0):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    # stable: the order within a group stays the collection order
    items.sort(key=lambda it: FIRST_GROUPS.index(g) if (g := _group(it)) in FIRST_GROUPS
               else len(FIRST_GROUPS))


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
