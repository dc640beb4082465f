"""The rollout planner (`drain.plan`): pure decisions on the fleet as it is now."""

from __future__ import annotations

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
