"""Fixtures for the node tests, each made once per session (they take minutes here): the
real single-node cluster (kube_node), Redis and Cassandra as host processes (`backing`), the
chart installed with the operator from the image (`operator_release`) and the ChatCluster
the chatcluster and rollout tests share (`chat_cluster`, tests/node/chatcluster.py); a
namespace per test for the rest (`node_namespace`)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.node import chatcluster, host_services, kube_node
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


@pytest.fixture(scope="session")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the Redis URL, the CQL contact point) the pods use."""
    workdir = tmp_path_factory.mktemp("node-backing")
    with host_services.host_redis(workdir) as redis_url, host_services.host_cql(workdir) as cql:
        yield redis_url, cql


@pytest.fixture(scope="session")
def operator_release(node: Kubectl) -> Iterator[None]:
    if not HELM.exists():
        pytest.skip("helm not built: run scripts/setup/30-kube.sh")
    env = {**os.environ, "KUBECONFIG": str(node.kubeconfig)}
    done = subprocess.run([str(HELM), "upgrade", "--install", "chatplane",
                           str(ROOT / "charts" / "chatplane"), "-n", "chatplane-system",
                           "--create-namespace", "--set", "image.pullPolicy=Never", "--wait",
                           "--timeout", "180s"], env=env, capture_output=True, text=True,
                          timeout=240)
    if done.returncode != 0:  # say why: the operator pod's state and events
        try:
            seen = (node.run("get", "pods", "-n", "chatplane-system", "-o", "wide")
                    + node.run("get", "events", "-n", "chatplane-system",
                               "--sort-by=.lastTimestamp")[-3000:])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            seen = str(exc)
        pytest.fail(f"helm install failed: {done.stderr.strip()[-2000:]}\n{seen}")
    try:
        yield
    finally:
        subprocess.run([str(HELM), "uninstall", "chatplane", "-n", "chatplane-system"],
                       check=False, env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def chat_cluster(node: Kubectl, backing: tuple[str, str], operator_release: None,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[chatcluster.Deployed]:
    redis_url, cql = backing
    with chatcluster.deployed(node, redis_url, cql, tmp_path_factory.mktemp("chat")) as live:
        yield live
