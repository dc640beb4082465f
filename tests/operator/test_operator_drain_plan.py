"""The rollout planner (`drain.plan`): pure decisions on the fleet as it is now; and the
orchestrator telling the gateways of one step to drain at once."""

from __future__ import annotations

import contextlib
import time

from pod_servers import HangingPod, OpenConnections

from chatplane_operator import drain

POLICY = drain.Policy(rate=100, deadline_s=60, max_unavailable=1, ready_timeout_s=30)


def gw(name: str, version: str = "v1", ready: bool = True, connections: int = 10,
       draining_since: float | None = None, started_at: float = 0.0) -> drain.Gateway:
    return drain.Gateway(name, version, ready, connections, draining_since, started_at,
                         ordinal=int(name.rsplit("-", 1)[1]))


def test_drains_the_highest_ordinal_first_one_at_a_time() -> None:
    fleet = [gw("g-0"), gw("g-1"), gw("g-2")]
    assert drain.plan(fleet, "v2", POLICY, 100) == drain.Step("drain", ("g-2",))


def test_max_unavailable_drains_several_at_once() -> None:
    fleet = [gw("g-0"), gw("g-1"), gw("g-2")]
    policy = drain.Policy(rate=100, deadline_s=60, max_unavailable=2)
    assert drain.plan(fleet, "v2", policy, 100).names == ("g-2", "g-1")


def test_follows_a_drain_until_empty_then_replaces() -> None:
    fleet = [gw("g-0"), gw("g-1"), gw("g-2", ready=False, connections=5, draining_since=90)]
    assert drain.plan(fleet, "v2", POLICY, 100).action == "wait"
    fleet[2] = gw("g-2", ready=False, connections=0, draining_since=90)
    assert drain.plan(fleet, "v2", POLICY, 100) == drain.Step("replace", ("g-2",), "drained")


def test_replaces_at_the_deadline_with_connections_left() -> None:
    fleet = [gw("g-0"), gw("g-1", ready=False, connections=7, draining_since=10)]
    assert drain.plan(fleet, "v2", POLICY, 70) == drain.Step("replace", ("g-1",), "deadline")


def test_waits_for_the_new_gateway_before_the_next_drain() -> None:
    fleet = [gw("g-0"), gw("g-1", "v2", ready=False, started_at=95)]
    assert drain.plan(fleet, "v2", POLICY, 100).action == "wait"
    # a replaced pod not even listed yet counts as unavailable too
    assert drain.plan([gw("g-0")], "v2", POLICY, 100, expected=2).action == "wait"


def test_a_new_gateway_not_ready_in_time_pauses_and_drains_nothing() -> None:
    fleet = [gw("g-0"), gw("g-1", "v2", ready=False, started_at=50)]
    step = drain.plan(fleet, "v2", POLICY, 100)
    assert step.action == "pause" and step.names == ("g-1",)
    assert "g-1 (version v2) not ready after 30s" in step.reason
    progress = drain.progress(fleet, "v2", step)
    assert progress.paused == step.reason and not progress.done


def test_a_fixed_version_replaces_the_broken_gateway_without_draining() -> None:
    fleet = [gw("g-0"), gw("g-1", "v2", ready=False, connections=0, started_at=50)]
    assert drain.plan(fleet, "v3", POLICY, 100) == drain.Step(
        "replace", ("g-1",), "not ready, no connections")


def test_done_when_every_gateway_is_at_the_target_and_ready() -> None:
    fleet = [gw("g-0", "v2"), gw("g-1", "v2")]
    step = drain.plan(fleet, "v2", POLICY, 100)
    assert step.action == "done"
    assert drain.progress(fleet, "v2", step).done


class HangingFleet:
    """Three old gateways whose admin ports accept and never answer (real sockets, read
    through the real `GatewayAdmin`); only the Kubernetes side is left out."""

    def __init__(self, pods: list[HangingPod], admin: drain.GatewayAdmin) -> None:
        self.pods = pods
        self.admin = admin

    async def gateways(self) -> list[drain.Gateway]:
        return [gw(f"g-{i}") for i in range(len(self.pods))]

    async def expected(self) -> int:
        return len(self.pods)

    async def start_drain(self, name: str, rate: float, deadline_s: float) -> None:
        pod = self.pods[int(name.rsplit("-", 1)[1])]
        with contextlib.suppress(OSError):  # no answer: the deadline replaces it
            await self.admin.drain(f"http://127.0.0.1:{pod.port}", rate, deadline_s)

    async def replace(self, name: str, version: str) -> None:
        raise AssertionError("nothing is replaced in this pass")


async def test_the_gateways_of_one_step_are_told_to_drain_at_once() -> None:
    """With max_unavailable 3 and gateways that do not answer their drain call, a pass
    waits for the admin timeout once, not once per gateway."""
    open_now = OpenConnections()
    pods = [HangingPod("127.0.0.1", 0, open_now) for _ in range(3)]
    try:
        fleet = HangingFleet(pods, drain.GatewayAdmin(timeout_s=0.5))
        policy = drain.Policy(rate=100, deadline_s=60, max_unavailable=3)
        began = time.monotonic()
        step, _, events = await drain.Orchestrator(fleet, "v2", policy).tick()
        took = time.monotonic() - began
    finally:
        for pod in pods:
            pod.close()
    assert step == drain.Step("drain", ("g-2", "g-1", "g-0"))
    assert [reason for reason, _ in events] == ["GatewayDraining"] * 3
    assert open_now.peak == 3  # the three calls were open together
    assert took < 1.2  # one after another: 1.5 s
