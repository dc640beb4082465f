"""The tier boundaries hold as import-linter contracts (.importlinter), and
the contracts do fail when a tier imports another, when a tier's client
imports its tier's insides, when the im's reads import its sequencing (or
membership what sits on it), when a layer imports one above it, or when a
sans-I/O core imports I/O: each case is a copy of the package with one
import added, judged by the real `lint-imports`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "dataplane" / "chatplane"
CONFIG = ROOT / ".importlinter"


def lint_imports(dataplane: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the package found under `dataplane`."""
    env = {**os.environ, "PYTHONPATH": str(dataplane)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
         " sys.exit(lint_imports_command())", "--config", str(CONFIG), "--no-cache"],
        capture_output=True, text=True, timeout=300, env=env, cwd=dataplane)


def test_the_contracts_hold() -> None:
    out = lint_imports(ROOT / "dataplane")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(("module", "added", "broken"), [
    ("gateway/service.py", "from chatplane.im import service as _im",
     "The tiers and the SDK are independent"),
    ("state/server.py", "from chatplane.gateway import connection as _gateway",
     "The tiers and the SDK are independent"),
    ("im/client.py", "from chatplane.im import service as _im",
     "A tier's client imports nothing else of its tier"),
    ("storage/base.py", "from chatplane.im import service as _im", "Layers"),
    ("im/reads.py", "from chatplane.im import sequencing as _sequencing", "The im by job"),
    ("im/membership.py", "from chatplane.im import reads as _reads", "The im by job"),
    ("protocol/wire.py", "import asyncio as _asyncio", "The sans-I/O cores import no I/O"),
    ("delivery/acks.py", "from chatplane.storage import sqlite as _sqlite", "Layers"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, added: str,
                                             broken: str) -> None:
    copy = tmp_path / "dataplane" / "chatplane"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns(
        "__pycache__", "static", "crowd_go", "*.so"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{added}  # noqa\n")
    out = lint_imports(copy.parent)
    assert out.returncode != 0, out.stdout
    assert f"{broken}" in out.stdout.split("Broken contracts")[-1], out.stdout


def test_importing_the_cores_loads_no_io() -> None:
    code = ("import sys, chatplane.protocol.session, chatplane.protocol.frames, "
            "chatplane.protocol.records, chatplane.delivery.acks, chatplane.delivery.sync, "
            "chatplane.delivery.fanout; "
            "print(sorted(m for m in ('asyncio', 'aiohttp', 'grpc', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_sdk_is_exported_at_the_top() -> None:
    from chatplane import Client
    from chatplane.client import Client as SdkClient

    assert Client is SdkClient
