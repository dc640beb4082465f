"""A real `chatplane up` process for tests: free ports, a temp data dir, the
ready line awaited, SIGTERM or kill -9, restart on the same data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from chatplane.ports import free_port, free_port_pair  # one port picker for every test


def stop_process(proc: subprocess.Popen[str], timeout_s: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout_s`; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def start_until_ready(args: list[str], env: dict[str, str], output: list[str],
                      timeout_s: float, what: str) -> subprocess.Popen[str]:
    """Start `args`, its output lines appended to `output` as they come, and return once
    it prints its ready line; stop it (SIGTERM, then SIGKILL) and raise with its output
    if it exits first or `timeout_s` passes."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line.rstrip())
            if "ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{what} did not get ready:\n" + "\n".join(output))
    return proc


class ServerProcess:
    def __init__(self, data_dir: Path, *, tcp: bool = True, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port_pair()
        self.tcp_port = free_port() if tcp else 0
        self.admin_port = self.port + 1  # admin API, /metrics, /admin/drain
        self.env = {**os.environ, "CHATPLANE_ADMIN_PORT": str(self.admin_port), **(env or {})}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def admin_secret(self) -> str:
        return (self.data_dir / "admin.secret").read_text().strip()

    def start(self, timeout_s: float = 20.0) -> None:
        args = [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(self.data_dir),
                "--port", str(self.port), *self.extra_args]
        if self.tcp_port:
            args += ["--tcp-port", str(self.tcp_port)]
        self.proc = start_until_ready(args, self.env, self.output, timeout_s, "chatplane up")

    def kill(self) -> None:
        """kill -9: no cleanup, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout_s)
