"""The bench's pure parts: the latency histogram and merging per-process results."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from chatplane.bench import report
from chatplane.bench.latency import LatencyHistogram, bucket_of, bucket_value
from tests.tools import beside


@given(st.integers(min_value=0, max_value=10**12))
def test_bucket_value_is_within_one_32nd(us: int) -> None:
    assert abs(bucket_value(bucket_of(us)) - us) <= max(1, us / 32)


def test_buckets_are_monotonic() -> None:
    prev = -1
    for us in range(0, 200_000, 7):
        idx = bucket_of(us)
        assert idx >= prev
        prev = idx


def test_percentiles_of_a_uniform_spread() -> None:
    h = LatencyHistogram()
    for us in range(1, 10_001):
        h.record(us)
    assert abs(h.percentile(50) - 5_000) <= 5_000 / 32
    assert abs(h.percentile(99) - 9_900) <= 9_900 / 32
    assert h.percentile(100) == h.max_us == 10_000
    assert h.summary_ms()["max_ms"] == 10.0
    assert LatencyHistogram().percentile(99) == 0


def test_merge_and_round_trip_equal_one_big_histogram() -> None:
    rng = random.Random(7)
    values = [rng.randrange(1, 5_000_000) for _ in range(5_000)]
    whole, a, b = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, v in enumerate(values):
        whole.record(v)
        (a if i % 2 else b).record(v)
    merged = LatencyHistogram.from_dict(a.to_dict())
    merged.merge(LatencyHistogram.from_dict(b.to_dict()))
    for p in (50, 90, 99, 99.9, 100):
        assert merged.percentile(p) == whole.percentile(p)
    assert merged.count == whole.count == 5_000
    assert merged.mean_us == whole.mean_us


def _part(sent: int, lost: int, lat: list[int]) -> dict[str, object]:
    h = LatencyHistogram()
    for v in lat:
        h.record(v)
    verdict = {
        "ok": lost == 0, "acked": sent, "received": 2 * sent - lost, "same_order": True,
        "devices": 4, "failed_devices": [], "lost": lost, "duplicated": 0, "reordered": 0,
        "gaps": 0, "conflicting": 0, "foreign": 0,
    }  # fmt: skip
    return {
        "pairs": 2, "offered_rate": 100.0, "duration_s": 2.0, "sent": sent, "acked": sent,
        "send_errors": 0, "unsent": 0, "unacked": 0, "delivered": sent - lost, "echoed": sent,
        "max_queue_delay_us": 10, "reconnects": 1, "bench_cpu_s": 0.5, "errors": [],
        "latency": h.to_dict(), "bench_loop_lag": h.to_dict(), "verdict": verdict,
    }  # fmt: skip


def test_merge_results_adds_up_and_fails_if_any_part_fails() -> None:
    merged = report.merge_results([_part(200, 0, [1000] * 10), _part(200, 3, [3000] * 10)])
    assert merged["sent"] == 400
    assert merged["pairs"] == 4
    assert merged["offered_rate"] == 200.0
    assert merged["reconnects"] == 2
    assert merged["verdict"]["lost"] == 3
    assert not merged["verdict"]["ok"]
    assert "FAILED" in merged["verdict_summary"]
    pub = report.finish(merged, {"transport": "ws", "procs": 2})
    assert not pub["clean"]
    assert pub["kept_up"]
    assert pub["latency_ms"]["max_ms"] == 3.0
    assert "NOT CLEAN" in report.table(pub)


def test_finish_flags_a_run_that_did_not_keep_up() -> None:
    part = _part(100, 0, [500])
    part["unsent"] = 100
    pub = report.finish(part, {})
    assert pub["clean"]  # nothing wrong with delivery ...
    assert not pub["kept_up"]  # ... but the offered rate was not served
    assert "did NOT keep up" in report.table(pub)


def test_progress_line_and_snapshot_merge() -> None:
    h = LatencyHistogram()
    h.record(2_000)
    snap = {"elapsed": 1.0, "sent": 5, "acked": 4, "delivered": 4, "rate": 4.0,
            "latency": h.to_dict()}  # fmt: skip
    merged = report.merge_snapshots([snap, snap])
    assert merged["sent"] == 10
    line = report.progress_line(merged)
    assert "sent=10" in line and "p99=2.0" in line


def test_storage_means_over_a_run() -> None:
    # /metrics has seconds; the means are reported in milliseconds
    before = {"chatplane_storage_commit_seconds_sum": 0.010,
              "chatplane_storage_commit_seconds_count": 4.0,
              "chatplane_storage_write_wait_seconds_sum": 0.003,
              "chatplane_storage_write_wait_seconds_count": 6.0}
    after = {"chatplane_storage_commit_seconds_sum": 0.040,
             "chatplane_storage_commit_seconds_count": 14.0,
             "chatplane_storage_write_wait_seconds_sum": 0.003,
             "chatplane_storage_write_wait_seconds_count": 6.0}
    assert beside.storage_means(before, after) == {
        "server_storage_write_wait_ms_mean": None,  # no write in the run
        "server_storage_commit_ms_mean": 3.0,
    }
    assert beside.storage_means({}, {}) == {  # a backend without them
        "server_storage_write_wait_ms_mean": None, "server_storage_commit_ms_mean": None}
