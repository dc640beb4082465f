"""The examples in docs/ run as written (against a real server)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

DOCS = Path(__file__).parent.parent / "docs"

pytestmark = pytest.mark.slow


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


def run_example(example: str, server: ServerProcess, tmp_path: Path) -> str:
    # The page assumes `chatplane up --data-dir ./chatplane-data` on port 8080.
    example = example.replace("http://127.0.0.1:8080", server.url)
    if not (tmp_path / "chatplane-data").exists():
        (tmp_path / "chatplane-data").symlink_to(server.data_dir)
    (tmp_path / "example.py").write_text(example)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_social_example_runs(server: ServerProcess, tmp_path: Path) -> None:
    example = python_blocks("client.md")[1]
    out = run_example(example, server, tmp_path)
    assert "[('lunch', 1)]" in out and "Receipts(read=['ben'], unread=[])" in out
    assert "receipt {'conversation_id'" in out


def test_client_example_runs(server: ServerProcess, tmp_path: Path) -> None:
    example = python_blocks("client.md")[0]
    # The page assumes `chatplane up --data-dir ./chatplane-data` on port 8080.
    example = example.replace("http://127.0.0.1:8080", server.url)
    (tmp_path / "chatplane-data").symlink_to(server.data_dir)
    (tmp_path / "example.py").write_text(example)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "stored as seq 1" in result.stdout
    assert "alice: hello bob" in result.stdout


def test_token_refresh_example_runs(server: ServerProcess, tmp_path: Path) -> None:
    out = run_example(python_blocks("client.md")[2], server, tmp_path)
    assert out.count("carol got ping") == 3
    fetched = int(out.rsplit("tokens fetched:", 1)[1])
    assert fetched >= 3  # the first token, then one per ~2 s of a 6 s session


def test_protocol_example_runs() -> None:
    for block in python_blocks("protocol.md"):
        exec(compile(block, "protocol.md", "exec"), {})
