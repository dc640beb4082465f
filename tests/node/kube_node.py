"""The single-node cluster the node tests run on, started by scripts/node/up.

`node_cluster()` reuses a cluster already up (its state directory has a pids file and its
apiserver answers), or starts one and stops it at the end. Tests skip, saying why, when the
machine cannot run it: not root, binaries not built (scripts/setup/35-node.sh), or the image
not built (scripts/image/build). `Kubectl` runs kubectl against it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CHATPLANE_NODE_STATE", "/run/chatplane-node"))
CACHE = Path(os.environ.get("CHATPLANE_CACHE") or Path.home() / ".cache" / "chatplane")
NODE_IP = "10.244.0.1"
IMAGE = "ghcr.io/chatplane/chatplane:0.1.0"
NODE_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubelet", "kube-proxy")


def missing() -> str | None:
    """Why this machine cannot run the node tests, or None."""
    if os.geteuid() != 0:
        return "the node tests run containerd and kubelet: root needed"
    for name in NODE_BINARIES:
        if not (CACHE / "kube" / "bin" / name).exists():
            return f"{name} not built: run scripts/setup/35-node.sh"
    for name in ("containerd", "runc", "kubectl", "gcc"):
        if shutil.which(name) is None:
            return f"{name} not installed: run scripts/setup/35-node.sh"
    if not list((CACHE / "image").glob("chatplane-*.tar")):
        return "the chatplane image is not built: run scripts/image/build"
    return None


@dataclass
class Kubectl:
    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        done = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def apply(self, manifest: str) -> None:
        self.run("apply", "-f", "-", stdin=manifest)

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.run("get", *args, "-o", "json")))

    def wait_ready(self, namespace: str, selector: str, timeout_s: float) -> dict[str, Any]:
        """Polls until every pod matching `selector` is Ready; says what the pods show if not."""
        deadline = time.monotonic() + timeout_s
        pods: dict[str, Any] = {}
        while time.monotonic() < deadline:
            pods = self.get("pods", "-n", namespace, "-l", selector)
            items = pods.get("items", [])
            if items and all(_ready(p) for p in items):
                return pods
            time.sleep(0.2)
        raise TimeoutError(f"pods {selector} not Ready in {timeout_s}s: "
                           + json.dumps([p.get("status") for p in pods.get("items", [])])[:3000])


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _answering(kubeconfig: Path) -> bool:
    done = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", "get", "--raw", "/readyz"],
                          capture_output=True, timeout=10)
    return done.returncode == 0


@contextlib.contextmanager
def node_cluster() -> Iterator[Kubectl]:
    kubeconfig = STATE / "kubeconfig"
    if (STATE / "pids").exists() and kubeconfig.exists() and _answering(kubeconfig):
        yield Kubectl(kubeconfig)
        return
    subprocess.run([str(ROOT / "scripts" / "node" / "up")], check=True, timeout=600)
    try:
        yield Kubectl(kubeconfig)
    finally:
        subprocess.run([str(ROOT / "scripts" / "node" / "down")], check=False, timeout=300)
