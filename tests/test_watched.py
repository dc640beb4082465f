"""`chatplane.supervision.watched`: what `cluster up`, the group bench and the test fixtures
start dies with the process that started it, even killed with -9, and is itself the process Popen returns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import subprocess, sys, time
from chatplane.supervision import watched
child = subprocess.Popen(watched(["sleep", "60"]), stdout=subprocess.PIPE)
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_watched_command_dies_with_its_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE,
                              env={**os.environ})
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        time.sleep(0.3)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep"  # exec'd
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 6  # the watchdog looks every 2 s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the watched command outlived its parent"
    finally:
        parent.kill()


def test_a_watched_command_ends_its_output_when_it_exits() -> None:
    from chatplane.supervision import watched

    started = time.monotonic()
    out = subprocess.run(watched(["echo", "ready"]), capture_output=True, timeout=10)
    # the watchdog subshell holds no stdio: EOF comes with the command's exit, not 2 s later
    assert out.stdout == b"ready\n" and time.monotonic() - started < 1.5
