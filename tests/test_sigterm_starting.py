"""SIGTERM stops a tier that is still starting, even as PID 1 (as in a container).

PID 1 of a PID namespace ignores every signal it has no handler for. A gateway installs its
SIGTERM handler (drain) once it serves, so a gateway container the kubelet had just
restarted when its pod was deleted ignored the SIGTERM and sat out the whole termination
grace period (found on the node: issue 16's rollout). `chatplane` now exits on SIGTERM from
its first line until a command installs its own handler.

The gateway here starts against a Redis that accepts connections and never answers, so its
start waits on it for seconds; it runs as PID 1 of a new PID namespace (`unshare`, root).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


@contextlib.contextmanager
def _silent_redis() -> Iterator[int]:
    """A TCP listener that accepts and never answers (the backlog holds the connections)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


def _child(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return None


def _catches_sigterm(pid: int) -> bool:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & SIGTERM_BIT)
    return False


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a PID namespace (unshare) needs root")
def test_a_starting_gateway_as_pid_1_exits_on_sigterm(tmp_path: Path) -> None:
    with _silent_redis() as port:
        env = {**os.environ, "CHATPLANE_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        log = open(tmp_path / "gateway.log", "w+b")
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "chatplane.cli",
             "gateway", "--port", "0", "--tcp-port", "0", "--grpc-port", "0",
             "--admin-port", "0", "--data-dir", str(tmp_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 30
            gateway = None
            while gateway is None or not _catches_sigterm(gateway):
                assert time.monotonic() < deadline and proc.poll() is None, \
                    (tmp_path / "gateway.log").read_text()
                gateway = _child(proc.pid)
                time.sleep(0.02)
            nspid = next(line for line in Path(f"/proc/{gateway}/status").read_text()
                         .splitlines() if line.startswith("NSpid:"))
            assert nspid.split()[-1] == "1", nspid  # PID 1 in its namespace
            os.kill(gateway, signal.SIGTERM)
            proc.wait(timeout=10)  # --kill-child: unshare ends when the gateway does
            out = (tmp_path / "gateway.log").read_text()
            assert "ready" not in out, out  # stopped while starting, not after
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            log.close()
