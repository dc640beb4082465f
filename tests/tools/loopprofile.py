"""`chatplane up` with cProfile on the event loop thread, switched by signals.

A harness for issue 21's cost per message, not part of the product: it runs the CLI
in this process; SIGUSR1 starts a profile of the main thread (the event loop) on
that thread's CPU clock (`time.thread_time`: waiting for a core is not counted),
SIGUSR2 stops it and writes the stats to `--out` (pstats; `python3 -m pstats`).

    python3 -m tests.tools.loopprofile --out /tmp/loop.prof -- up --data-dir D ...
    kill -USR1 PID; (load); kill -USR2 PID
"""

from __future__ import annotations

import argparse
import cProfile
import signal
import sys
import time
from types import FrameType

from chatplane.cli import main


def _switch(out: str) -> None:
    profile = cProfile.Profile(time.thread_time)

    def start(_sig: int, _frame: FrameType | None) -> None:
        profile.enable()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(out)
        print(f"loopprofile: wrote {out}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where SIGUSR2 writes the stats")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the chatplane command")
    args = parser.parse_args()
    _switch(args.out)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    sys.exit(main(argv))
