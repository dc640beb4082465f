"""kubectl for the benches that drive a deployed ChatCluster (`rollout`, `apply`): what a
platform team has, no client library."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Kubectl:
    """kubectl against one namespace (the bench needs nothing a platform team lacks)."""

    namespace: str
    kubeconfig: str | None = None

    def run(self, *args: str, stdin: str | None = None) -> str:
        command = ["kubectl", "-n", self.namespace, *args]
        if self.kubeconfig:
            command[1:1] = ["--kubeconfig", self.kubeconfig]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:3])}: {done.stderr.strip()}")
        return done.stdout

    def apply(self, manifest: str) -> str:
        """The applied ChatCluster's name (the manifest holds one)."""
        names = self.run("apply", "-f", "-", "-o", "name", stdin=manifest).split()
        clusters = [n.split("/", 1)[1] for n in names if n.startswith("chatcluster")]
        if len(clusters) != 1:
            raise ValueError(f"the manifest must hold one ChatCluster, it applied {names}")
        return clusters[0]

    def get(self, *args: str) -> dict[str, Any]:
        return dict(json.loads(self.run("get", "-o", "json", *args)))

    def secret(self, name: str, key: str) -> bytes:
        return base64.b64decode(self.get("secret", name)["data"][key])


def ready(obj: dict[str, Any]) -> bool:
    """Its `Ready` condition is True (a pod's or a ChatCluster's)."""
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions") or [])


def pods_of(kube: Kubectl, cluster: str, tier: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={cluster},app.kubernetes.io/component={tier}"
    return list(kube.get("pods", "-l", selector)["items"])


async def until(what: str, timeout_s: float, check: Any) -> float:
    """Seconds until `check()` (run in a thread: it calls kubectl) is true."""
    began = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"{what} not in {timeout_s:.0f}s")
        await asyncio.sleep(0.5)
    return time.monotonic() - began
