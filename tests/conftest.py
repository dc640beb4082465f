"""Shared fixtures: a real `chatplane up` process, tokens, the chaos proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from _pytest.nodes import NodeId

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
    # the CQL server's tests, also those that take it through a parametrized fixture
    # (their scylla param is marked cql) rather than by name
    if "cql_server" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cql"):
        return "cql"
    return item.nodeid.split("::")[0]  # a file: its module fixtures start once


# Runs in each xdist worker (the workers collect; xdist has set `dist` to "no" there and
# `loadgroup` to what the run asked). xdist 3.8 passes a test's group to the scheduler as an
# "@group" suffix of its id, written to a field pytest 9.2 no longer reads ids from
# (pytest-dev/pytest-xdist#1386): every group was split over both workers (two of the tests
# that kill the shared Cassandra at once, two node clusters, one tearing down the other's).
# So the groups go in first, and after xdist's hook the suffix where it did not take.
@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config,
                                  items: list[pytest.Item]) -> Generator[None, None, None]:
    grouping = bool(getattr(config.option, "loadgroup", False))
    if grouping:
        for item in items:
            item.add_marker(pytest.mark.xdist_group(_group(item)))
        # stable: the order within a group stays the collection order
        items.sort(key=lambda it: FIRST_GROUPS.index(g) if (g := _group(it)) in FIRST_GROUPS
                   else len(FIRST_GROUPS))
    yield
    if grouping:
        for item in items:
            nodeid = item.nodeid
            if nodeid.rfind("@") <= nodeid.rfind("]"):  # xdist's test for a suffix
                item._id = NodeId.parse(f"{nodeid}@{_group(item)}")  # type: ignore[attr-defined]


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
