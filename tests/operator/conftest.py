"""Fixtures for the operator tests: sample specs, the control plane, the CRD, the operator.

`plane` starts etcd + kube-apiserver once per session (see `controlplane.py`); each test
that talks to it gets its own namespace (`namespace`) and, when it needs one, its own
operator process watching only that namespace (`operator`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kube_chart
import kube_controlplane as controlplane
import pytest
import yaml
from kube_client import Kube

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_SRC = ROOT / "operator"
if str(OPERATOR_SRC) not in sys.path:
    sys.path.insert(0, str(OPERATOR_SRC))

EXAMPLE = ROOT / "examples" / "chatcluster.yaml"


def region(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "redis": {"urlSecretRef": {"name": f"redis-{name}", "key": "url"}},
        "cql": {"hosts": [f"scylla-{name}.scylla.svc"], "replicationFactor": 3},
        **extra,
    }


def cluster_body(name: str = "chat", namespace: str = "chat",
                 regions: tuple[str, ...] = ("eu", "us")) -> dict[str, Any]:
    return {
        "apiVersion": "chatplane.dev/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-" + name,
                     "generation": 1},
        "spec": {"image": {"version": "0.1.0"}, "regions": [region(r) for r in regions]},
    }


@pytest.fixture
def body() -> dict[str, Any]:
    return cluster_body()


@pytest.fixture
def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


@pytest.fixture(scope="session")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[controlplane.ControlPlane]:
    etcd = controlplane.find_binary("etcd")
    apiserver = controlplane.find_binary("kube-apiserver")
    if not etcd or not apiserver:
        pytest.skip("etcd/kube-apiserver not installed: run scripts/setup/30-kube.sh")
    with controlplane.running(tmp_path_factory.mktemp("kube"), etcd, apiserver) as running:
        yield running


@pytest.fixture(scope="session")
def kube(plane: controlplane.ControlPlane) -> Kube:
    """The control plane with the chart's CRD and the chart's RBAC for the operator."""
    if kube_chart.helm() is None:
        pytest.skip("helm not installed: run scripts/setup/30-kube.sh")
    client = Kube(plane)
    rendered = kube_chart.render(namespace=controlplane.OPERATOR_NAMESPACE)
    for obj in rendered:
        if obj["kind"] in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            client.apply(obj)
    client.wait_for(lambda: client.crd_established("chatclusters.chatplane.dev"),
                    timeout=30, what="CRD Established")
    return client


@pytest.fixture
def namespace(kube: Kube) -> str:
    name = "t-" + uuid.uuid4().hex[:8]
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def secrets_for(namespace: str, regions: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"redis-{r}", "namespace": namespace},
         "stringData": {"url": f"redis://redis-{r}:6379/0"}}
        for r in regions
    ]


class OperatorProcess:
    """`python -m chatplane_operator` against the test apiserver, in one namespace."""

    def __init__(self, plane: controlplane.ControlPlane, namespace: str, log: Path,
                 user: str = "operator", extra: tuple[str, ...] = ()) -> None:
        self.plane, self.namespace, self.log_path, self.user = plane, namespace, log, user
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.health_port = 0

    def start(self) -> None:
        self.metrics_port = controlplane.free_port()
        self.health_port = controlplane.free_port()
        env = {**self.plane.operator_env(self.user), "PYTHONPATH": f"{OPERATOR_SRC}{os.pathsep}{ROOT}"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chatplane_operator", "--namespace", self.namespace,
                 "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
                 "--resync-seconds", "30",
                 "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
                 *self.extra],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_operator(plane: controlplane.ControlPlane, namespace: str, log: Path,
                     extra: tuple[str, ...] = ()) -> Iterator[OperatorProcess]:
    """An operator process for the length of the block; its log's tail is
    printed after it (shown when the test fails)."""
    proc = OperatorProcess(plane, namespace, log, extra=extra)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        print("---- operator log (tail) ----\n" + proc.log()[-6000:])


@pytest.fixture
def operator(plane: controlplane.ControlPlane, kube: Kube, namespace: str,
             tmp_path: Path) -> Iterator[OperatorProcess]:
    with running_operator(plane, namespace, tmp_path / "operator.log") as proc:
        yield proc


@pytest.fixture
def make_cluster(kube: Kube, namespace: str) -> Callable[..., dict[str, Any]]:
    """Create the region Secrets and a ChatCluster in the test namespace."""

    def make(regions: tuple[str, ...] = ("eu", "us"), name: str = "chat",
             secrets: bool = True, mutate: Callable[[dict[str, Any]], None] | None = None,
             ) -> dict[str, Any]:
        if secrets:
            for secret in secrets_for(namespace, regions):
                kube.create(secret)
        obj = copy.deepcopy(cluster_body(name, namespace, regions))
        del obj["metadata"]["uid"], obj["metadata"]["generation"]
        if mutate:
            mutate(obj)
        return kube.create(obj)

    return make


def wait_until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def mark_workloads_ready(kube: Kube, namespace: str, regions: tuple[str, ...],
                         cluster: str = "chat") -> None:
    """Play the Deployment and StatefulSet controllers (none run here): every replica of
    every tier is ready and up to date."""
    for region in regions:
        for kind, tier in [("Deployment", "ipconf"), ("Deployment", "state"),
                           ("Deployment", "im"), ("StatefulSet", "gateway")]:
            obj = kube.get(kind, namespace, f"{cluster}-{region}-{tier}")
            n = obj["spec"]["replicas"]
            kube.merge_patch(kind, namespace, obj["metadata"]["name"], {"status": {
                "observedGeneration": obj["metadata"]["generation"], "replicas": n,
                "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n}},
                sub="status")
