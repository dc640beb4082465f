"""Rendering the Helm chart with the helm CLI (installed by scripts/setup/30-kube.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml
from kube_controlplane import find_binary

CHART = Path(__file__).resolve().parents[2] / "charts" / "chatplane"


def helm() -> str | None:
    return find_binary("helm")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    binary = helm()
    assert binary, "helm not installed: run scripts/setup/30-kube.sh"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def render(kube_version: str = "1.33.0", release: str = "chatplane",
           namespace: str = "chatplane-system", sets: tuple[str, ...] = (),
           crds: bool = True) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace,
            "--kube-version", kube_version]
    if crds:
        args.append("--include-crds")
    for value in sets:
        args += ["--set", value]
    done = run(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
