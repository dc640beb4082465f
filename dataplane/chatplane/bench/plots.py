"""PNG plots of W1 runs: latency distribution, the rate ladder, CPU per message.

A curve is read faster than a table. `write_all(rungs, directory)` takes the
published results of `bench direct` (one per rung; each keeps its latency
histogram in `latency_buckets`) and writes:

- `w1-latency.png`: the latency distribution of every rung as a percentile
  curve (x: percentile on a log scale of 1/(1-p), so the tail shows; y: ms);
- `w1-ladder.png`: achieved rate and p50/p99 latency against the offered rate,
  with the p99 limit a clean rung must stay under;
- `w1-cpu.png`: server and bench CPU per message (µs) against the offered rate
  (through `--cluster`: the server's is the sum, and each tier has its line).

`write_latency` draws the first of these for any labelled runs (`bench regions`:
one curve per durability mode and phase).

matplotlib is an optional dependency (`pip install 'chatplane[bench]'`); it is
imported here only, with the headless Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatplane.bench.latency import LatencyHistogram

PERCENTILES = (50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99)


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotsUnavailable(
            "--plots needs matplotlib: pip install 'chatplane[bench]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(rung: dict[str, Any]) -> str:
    return rung.get("label") or f"{rung.get('offered_rate', 0):,.0f} msgs/s"


def latency_figure(plt: Any, rungs: list[dict[str, Any]], path: Path,
                   title: str = "W1 latency distribution") -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [1 / (1 - p / 100) for p in PERCENTILES]
    for rung in rungs:
        hist = LatencyHistogram.from_dict(rung.get("latency_buckets", {}))
        if not hist.count:
            continue
        ax.plot(xs, [hist.percentile(p) / 1000 for p in PERCENTILES], marker="o", ms=3,
                label=_label(rung))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"p{p:g}" for p in PERCENTILES], fontsize=8)
    ax.set_ylabel("latency, send call to receipt (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ladder_figure(plt: Any, rungs: list[dict[str, Any]], path: Path, p99_limit_ms: float) -> None:
    offered = [r.get("offered_rate", 0) for r in rungs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(offered, offered, ls="--", color="grey", label="offered")
    top.plot(offered, [r.get("send_rate", 0) for r in rungs], marker="o", label="sent")
    for r in rungs:
        if not (r.get("clean") and r.get("kept_up")):
            top.plot([r["offered_rate"]], [r.get("send_rate", 0)], "rx", ms=9)
    top.set_ylabel("msgs/s")
    top.set_title("W1 rate ladder (red x: not clean or did not keep up)")
    top.legend(fontsize=8)
    top.grid(True, alpha=0.3)
    bottom.plot(offered, [r["latency_ms"]["p50_ms"] for r in rungs], marker="o", label="p50")
    bottom.plot(offered, [r["latency_ms"]["p99_ms"] for r in rungs], marker="o", label="p99")
    bottom.axhline(p99_limit_ms, color="red", ls=":", label=f"p99 limit {p99_limit_ms:g} ms")
    bottom.set_yscale("log")
    bottom.set_xlabel("offered msgs/s")
    bottom.set_ylabel("latency (ms)")
    bottom.legend(fontsize=8)
    bottom.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_figure(plt: Any, rungs: list[dict[str, Any]], path: Path) -> None:
    offered = [r.get("offered_rate", 0) for r in rungs]
    fig, ax = plt.subplots(figsize=(7, 4))
    tiers = dict.fromkeys(t for r in rungs for t in (r.get("tier_cpu_us_per_msg") or {}).get("tiers", {}))
    server = "server (sum of the tiers)" if tiers else "server"
    for key, label in (("server_cpu_us_per_msg", server), ("bench_cpu_us_per_msg", "bench")):
        points = [(o, r[key]) for o, r in zip(offered, rungs, strict=True) if r.get(key)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    for tier in tiers:
        points = [(o, r["tier_cpu_us_per_msg"]["tiers"][tier]) for o, r in zip(offered, rungs, strict=True)
                  if tier in (r.get("tier_cpu_us_per_msg") or {}).get("tiers", {})]
        ax.plot(*zip(*points, strict=True), marker=".", ls="--", label=tier)
    ax.set_xlabel("offered msgs/s")
    ax.set_ylabel("CPU µs per acked message")
    ax.set_ylim(bottom=0)
    ax.set_title("W1 CPU per message (fixed costs included)")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(rungs: list[dict[str, Any]], directory: str, p99_limit_ms: float = 50.0) -> list[str]:
    """Write the three plots into `directory` (created); return their paths."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "w1-latency.png", out / "w1-ladder.png", out / "w1-cpu.png"]
    latency_figure(plt, rungs, paths[0])
    ladder_figure(plt, rungs, paths[1], p99_limit_ms)
    cpu_figure(plt, rungs, paths[2])
    return [str(p) for p in paths]


def write_latency(runs: list[dict[str, Any]], directory: str, name: str, title: str) -> str:
    """One latency plot of several runs (each labelled by its `label`); its path."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    latency_figure(plt, runs, out / name, title)
    return str(out / name)
