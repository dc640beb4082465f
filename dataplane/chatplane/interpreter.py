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

And the cyclic garbage collector kept young. A gateway holding 10,000
connections has millions of long-lived objects, and each full collection
walked them all with the event loop stopped: 75-230 ms, several a minute
under a busy large group (1:1 p99 beside it 101 ms, 26 ms without them).
Every `FREEZE_EVERY_S` what has survived so far is frozen (`gc.freeze`: left
out of every collection, an O(1) move), so collections only walk what is
new; every `THAW_EVERY_S` everything is unfrozen again, so cycles that died
while frozen are collected after all — one long collection per period
instead of several a minute.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time

SWITCH_INTERVAL_S = 0.00025
FREEZE_EVERY_S = 5.0
THAW_EVERY_S = 600.0


def _freeze_survivors() -> None:
    thaw_at = time.monotonic() + THAW_EVERY_S
    while True:
        time.sleep(FREEZE_EVERY_S)
        if time.monotonic() >= thaw_at:
            gc.unfreeze()
            thaw_at = time.monotonic() + THAW_EVERY_S
        else:
            gc.freeze()


def prepare() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    threading.Thread(target=_freeze_survivors, name="gc-freezer", daemon=True).start()
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, a little slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
