"""The sans-I/O cores stay free of I/O: protocol/ and delivery/ import no
asyncio, sockets or HTTP, so they are tested (and fuzzed) with bytes alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "dataplane" / "chatplane"
FORBIDDEN = {"asyncio", "socket", "aiohttp", "grpc", "redis", "uvloop", "selectors", "threading"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_protocol_and_delivery_import_no_io() -> None:
    for layer in ("protocol", "delivery"):
        for module in (PACKAGE / layer).glob("*.py"):
            assert not imported_roots(module) & FORBIDDEN, f"{module.name} imports I/O"


def test_importing_the_cores_loads_no_io() -> None:
    code = ("import sys, chatplane.protocol.session, chatplane.protocol.frames, "
            "chatplane.delivery.acks, chatplane.delivery.sync, chatplane.delivery.fanout; "
            "print(sorted(m for m in ('asyncio', 'aiohttp', 'grpc', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_sdk_is_exported_at_the_top() -> None:
    from chatplane import Client
    from chatplane.client import Client as SdkClient

    assert Client is SdkClient
