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

from chatplane.cluster import free_port, free_port_pair  # one port picker for every test


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
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=self.env)
        ready = threading.Event()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line.rstrip())
                if "ready" in line:
                    ready.set()

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("chatplane up did not get ready:\n" + "\n".join(self.output))

    def kill(self) -> None:
        """kill -9: no cleanup, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
