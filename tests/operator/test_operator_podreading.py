"""The pass's reads of the data plane's pods (`podreading`), against real local sockets:
every pod asked once, all at once, one deadline for the batch; what fails or is late is
reported with why. And the pure assembly of one region's reads from the answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import cluster_body, wait_until
from pod_servers import AnsweringPod, HangingPod, OpenConnections, shared_port

from chatplane_operator import api, podreading

HOST = "127.0.0.1"
DEADLINE = 0.5


@pytest.fixture
def pods() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for pod in opened:
        pod.close()


def test_every_pod_is_asked_once_at_once_and_late_ones_are_given_up(pods: list[Any]) -> None:
    answering = [AnsweringPod(HOST, 0, {"/admin/drain": {"connections": n}}) for n in (3, 5)]
    shared = OpenConnections()
    hanging = [HangingPod(HOST, 0, shared) for _ in range(3)]
    pods += answering + hanging
    urls = {f"a{i}": f"http://{HOST}:{p.port}/admin/drain" for i, p in enumerate(answering)}
    urls |= {f"h{i}": f"http://{HOST}:{p.port}/admin/drain" for i, p in enumerate(hanging)}

    answers = podreading.read_all(urls, DEADLINE)

    assert {k: a.body for k, a in answers.items() if k.startswith("a")} == {
        "a0": {"connections": 3}, "a1": {"connections": 5}}
    for key in ("h0", "h1", "h2"):
        assert answers[key].body is None
        assert answers[key].error == f"GET {urls[key]}: no answer within {DEADLINE:g}s"
    assert [p.requests["/admin/drain"] for p in answering] == [1, 1]
    assert [p.accepted for p in hanging] == [1, 1, 1]
    # all three hanging requests were in flight together: one deadline, not one each
    assert shared.peak == len(hanging)
    # and each was given up on: the reader closed its connection
    wait_until(lambda: all(p.closed_by_client == 1 for p in hanging), 10,
               "the late connections closed by the reader")


def test_failures_are_answers_with_why(pods: list[Any]) -> None:
    port = shared_port([HOST])  # nothing listens there: refused
    wrong = AnsweringPod(HOST, 0, {"/admin/drain": {"connections": 1}})
    pods.append(wrong)
    urls = {"refused": f"http://{HOST}:{port}/v1/peers",
            "missing": f"http://{HOST}:{wrong.port}/v1/peers"}  # 404

    answers = podreading.read_all(urls, DEADLINE)

    assert answers["refused"].body is None and answers["refused"].error.startswith(
        f"GET {urls['refused']}: ")
    assert answers["missing"].body is None and "404" in answers["missing"].error
    assert podreading.read_all({}, DEADLINE) == {}


def _pod(name: str, ip: str | None, phase: str = "Running") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": name}, "status": status}


def test_region_reads_count_late_gateways_as_zero_and_late_im_pods_as_silent() -> None:
    cluster = api.parse(cluster_body(regions=("eu",)))
    admin = cluster.ports.admin
    gateways = [_pod("gw-0", "10.0.0.1"), _pod("gw-1", "10.0.0.2"),
                _pod("gw-2", None, "Pending")]
    ims = [_pod("im-0", "10.0.0.3"), _pod("im-1", "fd00::4")]
    listed = {("eu", "gateway"): gateways, ("eu", "im"): ims}

    urls = podreading.targets(cluster, listed)

    # a gateway's count and an im's peer report are both on the admin port
    assert urls == {("eu", "gateway", "gw-0"): f"http://10.0.0.1:{admin}/admin/drain",
                    ("eu", "gateway", "gw-1"): f"http://10.0.0.2:{admin}/admin/drain",
                    ("eu", "im", "im-0"): f"http://10.0.0.3:{admin}/v1/peers",
                    ("eu", "im", "im-1"): f"http://[fd00::4]:{admin}/v1/peers"}
    late = podreading.Answer(error="GET x: no answer within 1s")
    answers = {("eu", "gateway", "gw-0"): podreading.Answer({"connections": 7}),
               ("eu", "gateway", "gw-1"): late,
               ("eu", "im", "im-0"): podreading.Answer({"peers": [{"name": "us", "ok": True}]}),
               ("eu", "im", "im-1"): late}

    reads = podreading.region_reads("eu", listed, answers)

    assert reads.listed and [p["metadata"]["name"] for p in reads.gateways] == [
        "gw-0", "gw-1", "gw-2"]
    assert reads.connections == {"gw-0": 7, "gw-1": None}
    assert reads.total == 7
    assert reads.peers is not None
    assert reads.peers.answered == ("im-0",)
    assert reads.peers.silent == ("im-1: GET x: no answer within 1s",)


def test_region_reads_without_a_pod_list() -> None:
    reads = podreading.region_reads("eu", {("eu", "gateway"): None, ("eu", "im"): None}, {})
    assert not reads.listed and reads.peers is None and reads.total == 0
