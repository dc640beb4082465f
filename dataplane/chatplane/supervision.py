"""Supervision: every long-lived task of a process, by name, and what /readyz says of them.

A process (`chatplane up`, each tier) owns one `Supervisor`. Long-lived loops
(the gateway's deadline sweeps, head checks, route refreshes, the im's
outboxes, registry heartbeats, peer probes) are started through
`spawn(name, run)`: when one raises, the supervisor logs it with its
traceback, counts it in `chatplane_task_failures_total{task="<name>"}`, marks
it down (so `/readyz` answers 503 naming it) and starts it again after a
backoff that doubles from `restart_backoff_s` up to `MAX_BACKOFF_S`. A task
that fails more than `max_restarts` times within `restart_window_s` is not
restarted: the supervisor records one fatal line and `fatal()` resolves, and
the process runner exits non-zero with that line (a process that cannot do
its job is better restarted by its supervisor, Kubernetes or systemd, than
left half alive).

What is not an asyncio task is watched through `check(name, probe)`: the
probe returns the problems it sees now (the SQLite writer: stopped, wedged
on a job older than `wedge_s`, or a damaged file), each one listed by
/readyz while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from chatplane.settings import Supervision

log = logging.getLogger("chatplane.supervision")

MAX_BACKOFF_S = 10.0
METRIC = "chatplane_task_failures_total"


@dataclass
class _Entry:
    name: str
    failures: deque[float] = field(default_factory=deque)  # monotonic times in the window
    total: int = 0
    down: str = ""  # why it is not running now ("" while it runs)


class Supervisor:
    def __init__(self, config: Supervision) -> None:
        self.config = config
        self._entries: dict[str, _Entry] = {}
        self._checks: dict[str, Callable[[], list[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: asyncio.Future[str] | None = None
        self.fatal_line = ""

    # -- registering ------------------------------------------------------------

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` until it returns or is cancelled, restarting it when it raises."""
        entry = self._entries.setdefault(name, _Entry(name))
        task = asyncio.get_running_loop().create_task(self._keep(entry, run), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def check(self, name: str, probe: Callable[[], list[str]]) -> None:
        """`probe()` lists what keeps `name` from working right now ([] when fine)."""
        self._checks[name] = probe

    # -- running ------------------------------------------------------------------

    async def _keep(self, entry: _Entry, run: Callable[[], Awaitable[None]]) -> None:
        backoff = self.config.restart_backoff_s
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._record(entry, exc)
            if self._gave_up(entry):
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            log.warning("task %s: restarting", entry.name)
            entry.down = ""

    def _record(self, entry: _Entry, exc: BaseException) -> None:
        log.error("task %s failed", entry.name, exc_info=(type(exc), exc, exc.__traceback__))
        now = time.monotonic()
        entry.total += 1
        entry.failures.append(now)
        while entry.failures and entry.failures[0] < now - self.config.restart_window_s:
            entry.failures.popleft()
        entry.down = f"task {entry.name} failed: {type(exc).__name__}: {exc}"

    def _gave_up(self, entry: _Entry) -> bool:
        if len(entry.failures) <= self.config.max_restarts:
            return False
        line = (f"task {entry.name} failed {len(entry.failures)} times within"
                f" {self.config.restart_window_s:g} s; giving up ({entry.down})")
        entry.down = line
        if not self.fatal_line:
            self.fatal_line = line
            log.critical("%s", line)
            if self._fatal is not None and not self._fatal.done():
                self._fatal.set_result(line)
        return True

    async def fatal(self) -> str:
        """Resolves with one line when a task could not be kept running."""
        if self.fatal_line:
            return self.fatal_line
        if self._fatal is None:
            self._fatal = asyncio.get_running_loop().create_future()
        # shielded: a waiter that is cancelled must not cancel it for the others
        return await asyncio.shield(self._fatal)

    async def stop(self) -> None:
        """Cancel what is still supervised (each owner stops its own first)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what /readyz and /metrics show ---------------------------------------------

    def problems(self) -> list[str]:
        found = [entry.down for entry in self._entries.values() if entry.down]
        for name, probe in self._checks.items():
            try:
                found += probe()
            except Exception as exc:
                found.append(f"{name}: health check failed: {exc!r}")
        return found

    def ready(self) -> bool:
        return not self.problems()

    def details(self) -> dict[str, object]:
        """For the /readyz body: `problems` lists each failed or wedged part."""
        return {"problems": self.problems()}

    def families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(METRIC, "supervised tasks that raised (each was restarted"
                                     " unless the process gave up)", labels=["task"])
        for entry in self._entries.values():
            family.add_metric([entry.name], entry.total)
        yield family


async def serve_until(stop: asyncio.Event, supervisor: Supervisor) -> str:
    """Wait for `stop` or a fatal failure: '' after a stop, else the fatal line."""
    stopping = asyncio.ensure_future(stop.wait())
    failing = asyncio.ensure_future(supervisor.fatal())
    done, pending = await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return failing.result() if failing in done else ""


# A child process under a watchdog: a subshell that kills it once this process is gone
# (`cluster up`, a bench or a test killed with -9 left its children running for hours).
# `exec` makes the command the process Popen returns, so kill(), terminate() and its pid
# are its own; the subshell keeps no stdio, so the command's output ends when it does.
_WATCHDOG = ('parent=$1; shift; '
             '(while kill -0 "$parent" 2>/dev/null; do '
             'kill -0 $$ 2>/dev/null || exit 0; sleep 2; done; kill -9 $$) '
             '</dev/null >/dev/null 2>&1 & '
             'exec "$@"')


def watched(args: list[str]) -> list[str]:
    """`args` as a command that is killed when this process dies."""
    return ["sh", "-c", _WATCHDOG, "watchdog", str(os.getpid()), *args]
