"""Supervision in process: a failing task is logged with its traceback,
counted, shown by /readyz while down and restarted with backoff; one that
keeps failing makes the process give up with one line. The Node case runs a
real `chatplane up` node (SQLite, HTTP) in this process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from chatplane import settings as settings_mod
from chatplane.node import Node
from chatplane.settings import Supervision
from chatplane.supervision import Supervisor, serve_until
from tests.support import prom


def counter(text: str, task: str) -> float:
    return prom.samples(text)[f'chatplane_task_failures_total{{task="{task}"}}']


async def test_a_failing_task_is_logged_counted_shown_and_restarted(
        caplog: pytest.LogCaptureFixture) -> None:
    supervisor = Supervisor(Supervision(restart_backoff_s=0.2))
    runs = 0
    resumed = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        resumed.set()
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR, "chatplane.supervision"):
        task = supervisor.spawn("flaky-loop", flaky)
        await asyncio.sleep(0.05)
        # down during its backoff: not ready, named
        assert supervisor.problems() == ["task flaky-loop failed: RuntimeError: boom 1"]
        assert not supervisor.ready()
        await asyncio.wait_for(resumed.wait(), 5)
    assert runs == 3 and supervisor.ready() and supervisor.problems() == []
    assert counter(prom.exposition(supervisor.families), "flaky-loop") == 2
    failures = [r for r in caplog.records if "flaky-loop failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info for r in failures)  # with the traceback
    assert not supervisor.fatal_line
    task.cancel()
    await supervisor.stop()


async def test_a_task_that_keeps_failing_makes_the_process_give_up() -> None:
    supervisor = Supervisor(Supervision(max_restarts=2, restart_window_s=30,
                                        restart_backoff_s=0.01))

    async def broken() -> None:
        raise OSError("cannot reach anything")

    supervisor.spawn("broken-loop", broken)
    line = await asyncio.wait_for(supervisor.fatal(), 5)
    assert line == ("task broken-loop failed 3 times within 30 s; giving up"
                    " (task broken-loop failed: OSError: cannot reach anything)")
    assert counter(prom.exposition(supervisor.families), "broken-loop") == 3
    assert supervisor.problems() == [line]
    await supervisor.stop()


async def test_a_health_check_lists_its_problems_and_a_broken_check_is_one() -> None:
    supervisor = Supervisor(Supervision())
    found: list[str] = []
    supervisor.check("storage", lambda: found)
    assert supervisor.ready()
    found.append("storage writer wedged: oldest job 12.3 s")
    assert supervisor.details() == {"problems": ["storage writer wedged: oldest job 12.3 s"]}

    def broken() -> list[str]:
        raise ValueError("nope")

    supervisor.check("other", broken)
    assert "other: health check failed: ValueError('nope')" in supervisor.problems()


async def test_up_node_reports_a_dead_task_on_readyz_and_metrics_then_gives_up(
        tmp_path: Path) -> None:
    settings = settings_mod.load({
        "server": {"http_port": 0}, "storage": {"data_dir": str(tmp_path)},
        "supervision": {"max_restarts": 1, "restart_window_s": 30, "restart_backoff_s": 1.0}},
        environ={})
    node = Node(settings)
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(node.base_url + "/readyz") as response:
                assert response.status == 200
                assert (await response.json())["problems"] == []
            failed = asyncio.Event()

            async def dies() -> None:
                failed.set()
                raise KeyError("lost")

            node.supervisor.spawn("im-delivery-outbox", dies)
            await failed.wait()
            await asyncio.sleep(0.05)
            async with http.get(node.base_url + "/readyz") as response:
                assert response.status == 503
                body = await response.json()
            assert body["ready"] is False
            assert body["problems"] == ["task im-delivery-outbox failed: KeyError: 'lost'"]
            async with http.get(node.admin_url + "/metrics") as response:
                assert counter(await response.text(), "im-delivery-outbox") == 1
            # restarted once after 1 s, fails again: more than max_restarts, the runner stops
            line = await asyncio.wait_for(serve_until(asyncio.Event(), node.supervisor), 10)
            assert line.startswith("task im-delivery-outbox failed 2 times within 30 s")
    finally:
        await node.stop()
