"""What `chatplane bench apply` and `bench rollout` read from Kubernetes objects: pod start
times from a pod's own status, when a rollout is done, the busiest window of logins. (The
benches themselves drive a real node: docs/kubernetes-node.md, "Benches".)"""

from __future__ import annotations

import math
from typing import Any

from chatplane.bench.apply import image_size, pod_start
from chatplane.bench.rollout import LoginRate, rolled_to


def _pod(uid: str, version: str, ready: bool = True, deleting: bool = False,
         started: str | None = "2026-12-07T03:00:09Z") -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True",
                   "lastTransitionTime": "2026-12-07T03:00:00Z"},
                  {"type": "Ready", "status": "True" if ready else "False",
                   "lastTransitionTime": "2026-12-07T03:00:12.5Z"}]
    state = {"running": {"startedAt": started}} if started else {"waiting": {}}
    meta: dict[str, Any] = {"uid": uid, "labels": {"app.kubernetes.io/version": version}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T03:01:00Z"
    return {"metadata": meta, "status": {"conditions": conditions,
                                         "containerStatuses": [{"state": state}]}}


def test_a_pod_start_is_scheduled_to_ready_and_its_process_start_to_ready() -> None:
    assert pod_start(_pod("a", "1")) == (12.5, 3.5)
    assert pod_start(_pod("a", "1", ready=False)) is None
    scheduled, process = pod_start(_pod("a", "1", started=None)) or (0.0, 0.0)
    assert scheduled == 12.5 and math.isnan(process)


def test_a_rollout_is_done_when_every_pod_is_new_ready_and_on_the_version() -> None:
    new = [_pod("n0", "2"), _pod("n1", "2")]
    assert rolled_to(new, "2", {"o0", "o1"}, 2)
    assert not rolled_to([_pod("n0", "2"), _pod("o1", "2")], "2", {"o0", "o1"}, 2)
    assert not rolled_to([_pod("n0", "2"), _pod("n1", "1")], "2", {"o0", "o1"}, 2)
    assert not rolled_to([_pod("n0", "2"), _pod("n1", "2", ready=False)], "2", {"o0"}, 2)
    assert not rolled_to(new[:1], "2", {"o0", "o1"}, 2)
    # an old pod still terminating does not count against it
    assert rolled_to([*new, _pod("o0", "1", deleting=True)], "2", {"o0", "o1"}, 2)


def test_the_busiest_window_of_logins() -> None:
    meter = LoginRate([])
    meter.samples = [(0.0, 0), (1.0, 10), (2.0, 20), (3.0, 120), (4.0, 130), (10.0, 140)]
    assert meter.peak_per_second(2.0) == 55.0  # 20 → 130 between t=2 and t=4
    assert meter.peak_per_second(1.0) == 100.0


def test_the_image_size_is_what_a_node_that_holds_it_reports() -> None:
    nodes: list[dict[str, Any]] = [{"status": {"images": [
        {"names": ["chatplane.local/pause:1"], "sizeBytes": 1000},
        {"names": ["ghcr.io/chatplane/chatplane:0.1.0", "sha256:ab"], "sizeBytes": 371720192},
    ]}}, {"status": {}}]
    assert image_size(nodes, "ghcr.io/chatplane/chatplane:0.1.0") == 371720192
    assert image_size(nodes, "ghcr.io/chatplane/chatplane:0.2.0") is None
