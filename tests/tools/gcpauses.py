"""`chatplane up` (or any `chatplane` command) with every slow garbage collection logged.

A harness for issue 21's stall hunt, not part of the product: it runs the CLI in this
process with a `gc.callbacks` hook that prints, to stderr, each full collection and each
other one that took over `--over-ms` of wall time, with the CPU time the collecting
thread spent in it (wall time on a loaded machine includes waiting for a core).

    python3 -m tests.tools.gcpauses [--no-freezer] [--over-ms 5] -- up --data-dir D ...

`--no-freezer` leaves out `chatplane.interpreter`'s freezer thread, to compare.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from typing import Any

from chatplane import interpreter
from chatplane.cli import main


def _log_collections(over_ms: float) -> None:
    started: dict[str, float] = {}

    def hook(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["wall"], started["cpu"] = time.perf_counter(), time.thread_time()
            return
        wall_ms = (time.perf_counter() - started["wall"]) * 1000
        cpu_ms = (time.thread_time() - started["cpu"]) * 1000
        if info["generation"] == 2 or wall_ms > over_ms:
            print(f"gc t={time.time():.1f} gen={info['generation']} wall_ms={wall_ms:.1f} "
                  f"cpu_ms={cpu_ms:.1f} thread={threading.current_thread().name} "
                  f"collected={info['collected']}", file=sys.stderr, flush=True)

    gc.callbacks.append(hook)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.tools.gcpauses")
    parser.add_argument("--no-freezer", action="store_true",
                        help="without chatplane.interpreter's freezer thread")
    parser.add_argument("--over-ms", type=float, default=5.0,
                        help="log younger collections slower than this (wall)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the chatplane command line, after --")
    args = parser.parse_args(argv)
    if args.no_freezer:
        interpreter._freeze_survivors = lambda: None  # type: ignore[assignment]
    _log_collections(args.over_ms)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return main(command)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
