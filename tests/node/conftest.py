"""Fixtures for the node tests: one real single-node cluster per session (kube_node), and a
namespace per test, deleted afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.node import kube_node
from tests.node.kube_node import Kubectl


@pytest.fixture(scope="session")
def node() -> Iterator[Kubectl]:
    why = kube_node.missing()
    if why:
        pytest.skip(why)
    with kube_node.node_cluster() as kubectl:
        yield kubectl


@pytest.fixture
def node_namespace(node: Kubectl) -> Iterator[str]:
    name = "t-" + uuid.uuid4().hex[:8]
    node.run("create", "namespace", name)
    try:
        yield name
    finally:
        node.run("delete", "namespace", name, "--wait=false")
