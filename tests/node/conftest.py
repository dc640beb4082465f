"""Fixtures for the node tests: one real single-node cluster per session (kube_node), a
namespace per test, deleted afterwards, Redis and Cassandra as host processes per module
(`backing`), and the chart installed with the operator from the image (`operator_release`)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.node import host_services, kube_node
from tests.node.kube_node import CACHE, ROOT, Kubectl

HELM = CACHE / "kube" / "bin" / "helm"


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


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the Redis URL, the CQL contact point) the pods use."""
    workdir = tmp_path_factory.mktemp("node-backing")
    with host_services.host_redis(workdir) as redis_url, host_services.host_cql(workdir) as cql:
        yield redis_url, cql


@pytest.fixture
def operator_release(node: Kubectl) -> Iterator[None]:
    if not HELM.exists():
        pytest.skip("helm not built: run scripts/setup/30-kube.sh")
    env = {**os.environ, "KUBECONFIG": str(node.kubeconfig)}
    subprocess.run([str(HELM), "upgrade", "--install", "chatplane", str(ROOT / "charts" / "chatplane"),
                    "-n", "chatplane-system", "--create-namespace",
                    "--set", "image.pullPolicy=Never", "--wait", "--timeout", "180s"],
                   check=True, env=env, capture_output=True, timeout=240)
    try:
        yield
    finally:
        subprocess.run([str(HELM), "uninstall", "chatplane", "-n", "chatplane-system"],
                       check=False, env=env, capture_output=True, timeout=120)
