"""Failover of a whole region with real processes (docs/architecture.md, "Failover"):
two `chatplane up` regions in `sync` durability, devices in both sending into chats
homed in eu, kill -9 of eu. The SDK clients, given both regions' URLs, move to us; us
takes over eu's homes after the detection time and acks sends again; the checker is
clean for everything acked (nothing lost, nothing twice, one message per seq). eu is
then started again on its store: it converges with us and forwards its clients' sends
to us, sequencing none of the chats it lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.failoverbench import run_failover

pytestmark = pytest.mark.slow

DETECT_S = 3.0  # CHATPLANE_FAILOVER_AFTER_S here (default 5 s: docs/benchmarks.md)


async def test_kill_of_the_home_region_fails_over_and_the_region_returns_as_a_follower(
        tmp_path: Path) -> None:
    run = await run_failover(tmp_path, after_kill_s=4.0,
                             env={"CHATPLANE_FAILOVER_AFTER_S": str(DETECT_S)})
    assert run.acked_before > 20 and run.acked_after > 20, run
    # detection (counted from the last answered Hello, up to one probe interval before
    # the kill), plus the clients' reconnect and resend, within the target
    assert DETECT_S - 0.5 <= run.failover_s <= 10.0, run.failover_s
    assert run.verdict.ok, run.verdict.summary()
    assert run.takeover["lost"] == ["eu"] and run.takeover["takeovers"][0]["homes"] >= 4, run.takeover
    assert run.histories_equal
    assert run.forwarded_by_eu == 4 and run.sequenced_by_eu == 0
