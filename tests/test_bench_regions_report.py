"""The region benches' pure parts: the lag summary of sampled `/v1/peers` answers
(`bench/peerlag.py`), what a cross-region phase adds to the local one and the
durability mode read from `/v1/peers` (`bench/crossregion.py`)."""

from __future__ import annotations

from typing import Any

from chatplane.bench.crossregion import adds, durability_of
from chatplane.bench.peerlag import LagSample, LagSampler


def test_lag_summary_gives_entries_and_seconds_at_the_apply_rate() -> None:
    sampler = LagSampler({})
    # us applied eu's log from 1,000 to 3,000 over 2 s (1,000 entries/s), lag 0..100
    sampler.samples["us<-eu"] = [LagSample(10.0 + i * 0.25, lag, 1000 + i * 250)
                                 for i, lag in enumerate([0, 10, 20, 20, 40, 100, 10, 0, 0])]
    row = sampler.summary()["us<-eu"]
    assert row["samples"] == 9 and row["max"] == 100 and row["p50"] == 10
    assert row["applied"] == 2000 and row["apply_rate"] == 1000.0
    assert row["p50_s"] == 0.01 and row["max_s"] == 0.1


def test_lag_in_seconds_is_unknown_when_nothing_was_applied() -> None:
    sampler = LagSampler({})
    sampler.samples["eu<-us"] = [LagSample(1.0, 0, 5), LagSample(2.0, 0, 5)]
    row = sampler.summary()["eu<-us"]
    assert row["apply_rate"] == 0 and row["p50_s"] is None and row["max_s"] is None


def _pub(receipt: tuple[float, float], ack: tuple[float, float]) -> dict[str, Any]:
    return {"latency_ms": {"p50_ms": receipt[0], "p99_ms": receipt[1]},
            "ack_latency_ms": {"p50_ms": ack[0], "p99_ms": ack[1]}}


def test_adds_are_each_cross_region_phase_minus_local() -> None:
    phases = {"local": _pub((8, 90), (8, 89)), "replicated": _pub((91, 438), (7, 69)),
              "forwarded": _pub((26, 512), (29, 664)), "lag": _pub((3000, 5000), (3000, 5000))}
    found = adds(phases)
    assert set(found) == {"replicated", "forwarded"}  # lag runs at another rate: no delta
    assert found["replicated"] == {"receipt_p50_ms": 83, "receipt_p99_ms": 348,
                                   "ack_p50_ms": -1, "ack_p99_ms": -20}
    assert found["forwarded"]["ack_p50_ms"] == 21
    assert adds({"replicated": phases["replicated"]}) == {}  # no baseline, no delta


def test_durability_is_read_from_a_peers_confirmations() -> None:
    peers = {"region": "eu", "peers": [{"name": "us", "replication": {
        "lag": 0, "confirmations": {"durability": "async", "lost": False}}}]}
    assert durability_of(peers) == "async"
    assert durability_of({"region": "eu", "peers": [{"name": "us"}]}) == "unknown"
