"""How a server process sets up the interpreter before its event loop runs.

uvloop, when installed. And a short GIL switch interval: the SQLite writer
thread (group commit) and the read pool take the GIL back between every two
statements. While the event loop thread is busy — a 10,000-member group's
fan-out runs in 1 ms slices for 100 ms and more — a waiting thread gets the
GIL only when the interpreter forces a switch, every 5 ms by default, so a
commit of a dozen statements took tens of ms and every send waited for it
(1:1 latency beside a group busy at 100 msgs/s: p50 37 to 107 ms at 5 ms,
16 ms at 0.25 ms; docs/benchmarks.md). A thread that does not wait costs
nothing: the interval only matters while another thread asks for the GIL.
"""

from __future__ import annotations

import asyncio
import sys

SWITCH_INTERVAL_S = 0.00025


def prepare() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a little slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
