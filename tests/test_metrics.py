"""/metrics through prometheus_client (chatplane/metrics.py): base units, the
official parsers read it, and `chatplane up` shows every tier's figures once."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from chatplane import metrics
from chatplane import settings as settings_mod
from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.gateway.app import GatewayApp
from chatplane.im.app import ImApp
from chatplane.ipconf.app import IpconfApp
from chatplane.state.app import StateApp
from tests.support import prom
from tests.support.server import ServerProcess


def test_a_histogram_is_cumulative_and_in_seconds() -> None:
    hist = metrics.Histogram("chatplane_test_seconds", "a test")
    for seconds in (0.0004, 0.0005, 0.003, 7.0):
        hist.observe(seconds)
    figures = prom.of(lambda: [hist.family()])
    assert figures['chatplane_test_seconds_bucket{le="0.0005"}'] == 2  # le: bounds included
    assert figures['chatplane_test_seconds_bucket{le="0.005"}'] == 3
    assert figures['chatplane_test_seconds_bucket{le="5.0"}'] == 3
    assert figures['chatplane_test_seconds_bucket{le="+Inf"}'] == 4
    assert figures["chatplane_test_seconds_count"] == 4
    assert figures["chatplane_test_seconds_sum"] == pytest.approx(7.0039)


def test_a_name_two_parts_export_is_refused_at_registration() -> None:
    first, second = metrics.Readings(), metrics.Readings()
    first.counter("chatplane_twice_total", "one part", lambda: 1)
    second.counter("chatplane_twice_total", "another part", lambda: 2)
    metrics.registry(first.families)  # alone: fine
    with pytest.raises(ValueError, match="chatplane_twice"):
        metrics.registry(first.families, second.families)


async def test_each_cluster_tier_exports_its_figures_once_in_base_units(tmp_path: Path) -> None:
    # the Redis URL is never dialed: the apps are built, not started
    settings = settings_mod.load({"storage": {"data_dir": str(tmp_path),
                                              "redis_url": "redis://127.0.0.1:1/0"}}, environ={})
    gateway, im, state, ipconf = (GatewayApp(settings), ImApp(settings), StateApp(settings),
                                  IpconfApp(settings))
    await im.storage.open()  # im's registry is made once its storage is open (start())
    try:
        expected = {gateway: "chatplane_send_latency_seconds", im: "chatplane_im_sent",
                    state: "chatplane_state_deliver_seconds", ipconf: "chatplane_dispatch_requests"}
        for app, name in expected.items():
            text = generate_latest(app.metrics_registry()).decode()
            names = [f.name for f in text_string_to_metric_families(text)]
            assert len(names) == len(set(names)), app.kind
            assert name in names and "chatplane_task_failures" in names, (app.kind, names)
            assert not [n for n in names if re.search(r"_ms($|_)", n)], app.kind
    finally:
        await im.storage.close()
        for app in (gateway, im, state, ipconf):
            await app.redis.aclose()


@pytest.mark.slow
async def test_up_metrics_parse_in_base_units_with_every_tier_once(
        server: ServerProcess, signer: TokenSigner) -> None:
    ann = Client(server.url, signer.mint("ann", "phone", 600))
    await ann.connect()
    try:
        conversation = await ann.direct("bob")
        for i in range(3):
            await ann.send_text(conversation, f"hello {i}")
        async with aiohttp.ClientSession() as http:
            async with http.get(server.admin_url + "/metrics") as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await reply.text()
            # what Prometheus asks for: OpenMetrics, which its own parser reads
            async with http.get(server.admin_url + "/metrics", headers={
                    "Accept": "application/openmetrics-text; version=1.0.0"}) as reply:
                assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
                open_text = await reply.text()
    finally:
        await ann.close()
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a family exported twice"
    assert {f.name for f in openmetrics_families(open_text)} == set(names)
    assert not [n for n in names if re.search(r"_ms($|_)", n)], "a figure in milliseconds"
    kinds = {f.name: f.type for f in families}
    # one figure from each tier and part that `up` runs in its process
    for name, kind in (("chatplane_connections", "gauge"),  # gateway
                       ("chatplane_send_latency_seconds", "histogram"),
                       ("chatplane_im_sent", "counter"),  # im
                       ("chatplane_im_hot_messages", "gauge"),
                       ("chatplane_group_fanout_seconds", "histogram"),  # state
                       ("chatplane_storage_commit_seconds", "histogram"),  # storage
                       ("chatplane_storage_writer_up", "gauge"),
                       ("chatplane_task_failures", "counter"),  # supervisor
                       ("chatplane_process_rss_bytes", "gauge"),
                       ("process_resident_memory_bytes", "gauge")):
        assert kinds.get(name) == kind, (name, kinds.get(name))
    figures = prom.samples(text)
    assert figures["chatplane_im_sent_total"] >= 3
    assert figures["chatplane_connections"] == 1
    sends = figures["chatplane_send_latency_seconds_count"]
    assert sends >= 3
    # seconds, not milliseconds: three local sends take far less than a second each
    assert 0 < figures["chatplane_send_latency_seconds_sum"] < sends
    assert figures["chatplane_storage_writer_up"] == 1
