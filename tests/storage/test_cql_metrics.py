"""What the CQL session counts (storage/cql_metrics.py) as a scrape reads it: counters
and conditional rounds by statement kind, latency in seconds, statements per batch."""

from __future__ import annotations

import pytest

from chatplane.storage.cql_metrics import CqlStats
from tests.support import prom


def test_requests_by_kind_with_latency_in_seconds_and_batch_sizes() -> None:
    stats = CqlStats()
    stats.carried(["append"])
    stats.request("append", 0.0004, conditional=False, failed=False)
    stats.carried(["reserve"])
    stats.request("reserve", 0.003, conditional=True, failed=False)
    stats.carried(["append", "inbox", "inbox"])
    stats.request("batch", 0.020, conditional=False, failed=True)
    stats.appends += 2
    text = prom.exposition(lambda: stats.families())
    figures = prom.samples(text)
    assert figures['chatplane_cql_requests_total{kind="append"}'] == 1
    assert figures['chatplane_cql_conditional_total{kind="reserve"}'] == 1
    assert figures['chatplane_cql_errors_total{kind="batch"}'] == 1
    assert figures['chatplane_cql_statements_total{kind="inbox"}'] == 2
    assert figures['chatplane_cql_statements_total{kind="append"}'] == 2
    assert figures["chatplane_storage_appends_total"] == 2
    assert figures['chatplane_cql_request_seconds_bucket{kind="append",le="0.0005"}'] == 1
    assert figures['chatplane_cql_request_seconds_bucket{kind="reserve",le="0.0025"}'] == 0
    assert figures['chatplane_cql_request_seconds_bucket{kind="reserve",le="0.005"}'] == 1
    assert figures['chatplane_cql_request_seconds_sum{kind="batch"}'] == pytest.approx(0.020)
    assert figures['chatplane_cql_batch_statements_bucket{le="2.0"}'] == 0
    assert figures['chatplane_cql_batch_statements_bucket{le="4.0"}'] == 1
    assert figures["chatplane_cql_batch_statements_count"] == 1
    assert "# TYPE chatplane_cql_request_seconds histogram" in text
