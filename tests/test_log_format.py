"""Log lines of a real `chatplane up` (`--log-format`, CHATPLANE_LOG_FORMAT): one JSON
object per line on stderr, a bad format refused at start with one line, and no token in
any line, even at DEBUG with a refused login."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.protocol.errors import RequestError
from tests.support.server import free_port_pair


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_bad_log_format_fails_at_start_with_one_line(tmp_path: Path, how: str) -> None:
    flag = ["--log-format", "xml"] if how == "flag" else []
    env = {"PATH": "/usr/bin:/bin", **({"CHATPLANE_LOG_FORMAT": "xml"} if how == "env" else {})}
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", *flag, "up", "--data-dir",
                           str(tmp_path), "--port", "0"],
                          env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "--log-format" in done.stderr and "'xml'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
async def test_up_logs_json_lines_without_tokens_or_keys(data_dir: Path) -> None:
    port = free_port_pair()
    url = f"http://127.0.0.1:{port}"
    old, new = "old-secret-" + "o" * 16, "new-secret-" + "n" * 16
    keys = data_dir / "keys"
    keys.write_text(f"k1:{old}")
    env = {**os.environ, "CHATPLANE_LOG_FORMAT": "json", "CHATPLANE_LOG_LEVEL": "DEBUG",
           "CHATPLANE_ADMIN_PORT": str(port + 1), "CHATPLANE_TOKEN_KEYS_FILE": str(keys)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(data_dir), "--port",
        str(port), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    first = TokenSigner(keys={"k1": old.encode()}).mint("ann", "phone", 600)
    second = TokenSigner(keys={"k2": new.encode()}).mint("ann", "laptop", 600)
    forged = first[:-6] + ("AAAAAA" if not first.endswith("AAAAAA") else "BBBBBB")
    try:
        assert proc.stdout is not None
        assert b"ready" in await asyncio.wait_for(proc.stdout.readline(), 30)
        ann = Client(url, first)
        await ann.connect()
        await ann.send_text(await ann.direct("bob"), "hello")
        await ann.close()
        with pytest.raises(RequestError):  # refused: the signature does not match
            await Client(url, forged).connect(timeout_s=5)
        # a key rotation is logged (a warning), then a file it cannot read (another)
        keys.write_text(f"k2:{new},k1:{old}")
        await asyncio.sleep(1.1)  # the file is looked at once a second
        laptop = Client(url, second)
        await laptop.connect()
        await laptop.close()
        keys.write_text(f"k3:tiny-k3,k2:{new}")
        await asyncio.sleep(1.1)
        with pytest.raises(RequestError):
            await Client(url, forged).connect(timeout_s=5)
    finally:
        proc.terminate()
        output, errors = await asyncio.wait_for(proc.communicate(), 30)
    out, err = output.decode(), errors.decode()
    entries = [json.loads(line) for line in err.splitlines()]  # every line one JSON object
    for entry in entries:
        assert {"ts", "level", "service", "logger", "msg"} <= entry.keys(), entry
        assert entry["service"] == "up"
    messages = [e["msg"] for e in entries if e["logger"] == "chatplane.auth"]
    assert any("reloaded" in m for m in messages) and any("not reloaded" in m for m in messages)
    for secret in (first, second, forged, old, new, "tiny-k3"):
        for part in secret.split("."):  # neither a token nor any part of one, nor a key
            assert part not in err and part not in out, part
