"""Bench results: merge per-process results, print the progress line and the table.

A result is a plain JSON-ready dict (see `DirectRun.result`), so the results of
several bench processes are merged here field by field: counters add up,
latency histograms merge, verdicts add up (clean only if every part is clean).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from chatplane.bench import tiercpu
from chatplane.bench.latency import LatencyHistogram
from chatplane.checker import KINDS

_SUMMED = (
    "pairs",
    "sent",
    "acked",
    "send_errors",
    "unsent",
    "unacked",
    "delivered",
    "echoed",
    "reconnects",
    "duplicate_entries",
    "cuts",
    "history_pages",
    "history_failed",
    "bench_cpu_s",
)


def merge_verdicts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "ok": all(p.get("ok", False) for p in parts),
        "acked": sum(p.get("acked", 0) for p in parts),
        "received": sum(p.get("received", 0) for p in parts),
        "same_order": all(p.get("same_order", False) for p in parts),
        "devices": sum(p.get("devices", 0) for p in parts),
        "failed_devices": [d for p in parts for d in p.get("failed_devices", [])][:20],
    }
    for kind in KINDS:
        merged[kind] = sum(p.get(kind, 0) for p in parts)
    return merged


def verdict_line(v: dict[str, Any]) -> str:
    state = "CLEAN" if v.get("ok") else "FAILED"
    kinds = " ".join(f"{k}={v.get(k, 0)}" for k in KINDS)
    same = "yes" if v.get("same_order") else "NO"
    return (
        f"{state}: acked={v.get('acked', 0)} received={v.get('received', 0)} {kinds} "
        f"same_order={same} devices={v.get('devices', 0)}"
    )


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result out of the results of disjoint slices of one run."""
    if len(parts) == 1:
        return dict(parts[0])
    out: dict[str, Any] = {k: sum(p.get(k, 0) for p in parts) for k in _SUMMED}
    out["offered_rate"] = sum(p.get("offered_rate", 0) for p in parts)
    out["devices_per_user"] = parts[0].get("devices_per_user", 1)
    cpus = [p["server_cpu_s"] for p in parts if p.get("server_cpu_s") is not None]
    out["server_cpu_s"] = cpus[0] if cpus else None  # only the first slice reads it
    out["processes_cpu_s"] = next((p["processes_cpu_s"] for p in parts
                                   if p.get("processes_cpu_s")), {})
    out["duration_s"] = max(p.get("duration_s", 0) for p in parts)
    out["max_queue_delay_us"] = max(p.get("max_queue_delay_us", 0) for p in parts)
    out["errors"] = [e for p in parts for e in p.get("errors", [])][:10]
    lags = [p["replication_lag"] for p in parts if p.get("replication_lag")]
    out["replication_lag"] = lags[0] if lags else None  # only the first slice samples it
    out["latency"] = merge_latency(p.get("latency", {}) for p in parts).to_dict()
    out["ack_latency"] = merge_latency(p.get("ack_latency", {}) for p in parts).to_dict()
    out["bench_loop_lag"] = merge_latency(p.get("bench_loop_lag", {}) for p in parts).to_dict()
    out["verdict"] = merge_verdicts([p.get("verdict", {}) for p in parts])
    out["verdict_summary"] = verdict_line(out["verdict"])
    return out


def merge_latency(parts: Iterable[dict[str, Any]]) -> LatencyHistogram:
    total = LatencyHistogram()
    for part in parts:
        total.merge(LatencyHistogram.from_dict(part))
    return total


def finish(result: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The published form: settings, counters, latency percentiles, verdict."""
    hist = LatencyHistogram.from_dict(result.get("latency", {}))
    duration = result.get("duration_s") or 0.0
    out = {"workload": "W1 direct", **settings}
    hidden = ("latency", "ack_latency", "bench_loop_lag")
    out.update({k: v for k, v in result.items() if k not in hidden})
    out["latency_ms"] = hist.summary_ms()
    out["ack_latency_ms"] = LatencyHistogram.from_dict(result.get("ack_latency", {})).summary_ms()
    lag = LatencyHistogram.from_dict(result.get("bench_loop_lag", {}))
    out["bench_loop_lag_ms"] = {
        "p99_ms": round(lag.percentile(99) / 1000, 3),
        "max_ms": round(lag.max_us / 1000, 3),
    }
    server_cpu = result.get("server_cpu_s")
    acked = result.get("acked", 0)
    out["server_cpu_us_per_msg"] = (
        round(server_cpu * 1e6 / acked) if server_cpu is not None and acked else None
    )
    if result.get("processes_cpu_s"):
        out["tier_cpu_us_per_msg"] = tiercpu.per_message(
            result["processes_cpu_s"], settings.get("cpu_tiers", {}), acked)
    out["bench_cpu_pct"] = round(100 * result.get("bench_cpu_s", 0) / duration) if duration else 0
    out["bench_cpu_us_per_msg"] = (
        round(result.get("bench_cpu_s", 0) * 1e6 / acked) if acked else None
    )
    out["send_rate"] = round(result.get("sent", 0) / duration, 1) if duration else 0.0
    out["clean"] = bool(
        result.get("verdict", {}).get("ok")
        and not result.get("send_errors")
        and not result.get("unacked")
        and not result.get("history_failed")
        and result.get("delivered", 0) >= result.get("acked", 0) * result.get("devices_per_user", 1)
    )
    # Did the server keep up with the offered rate? If acks come back slower
    # than offered, every sender's window fills and due messages are dropped.
    offered = result.get("offered_rate", 0) * duration
    out["kept_up"] = bool(result.get("unsent", 0) == 0 and result.get("sent", 0) >= 0.97 * offered)
    return out


def progress_line(snap: dict[str, Any]) -> str:
    p99 = snap.get("p99_us", 0) / 1000
    rate = "done" if snap.get("final") else f"rate={snap.get('rate', 0):.0f}/s"
    return (
        f"[{snap.get('elapsed', 0):6.1f}s] sent={snap.get('sent', 0)} "
        f"acked={snap.get('acked', 0)} delivered={snap.get('delivered', 0)} "
        f"{rate} p99={p99:.2f}ms"
    )


def merge_snapshots(snaps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    snaps = list(snaps)
    hist = merge_latency(s.get("latency", {}) for s in snaps)
    return {
        "elapsed": max((s.get("elapsed", 0) for s in snaps), default=0),
        "sent": sum(s.get("sent", 0) for s in snaps),
        "acked": sum(s.get("acked", 0) for s in snaps),
        "delivered": sum(s.get("delivered", 0) for s in snaps),
        "rate": sum(s.get("rate", 0) for s in snaps),
        "duration": max((s.get("duration", 0) for s in snaps), default=0),
        "p99_us": hist.percentile(99),
        "final": bool(snaps) and all(s.get("final") for s in snaps),
    }


BAR_WIDTH = 24


def progress_bar(snap: dict[str, Any]) -> str:
    """`[#######.........]  42%` over the offering window, then the progress line."""
    duration = snap.get("duration") or 0
    done = 1.0 if snap.get("final") or not duration else min(1.0, snap.get("elapsed", 0) / duration)
    filled = round(done * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:4.0%} " + progress_line(snap)


def print_progress(snap: dict[str, Any], out: TextIO = sys.stderr) -> None:
    """A bar redrawn in place on a terminal; one line per snapshot otherwise (logs, CI)."""
    if out.isatty():
        out.write("\r\033[K" + progress_bar(snap) + ("\n" if snap.get("final") else ""))
    else:
        out.write(progress_line(snap) + "\n")
    out.flush()


def table(pub: dict[str, Any]) -> str:
    lat = pub["latency_ms"]
    ack = pub.get("ack_latency_ms") or LatencyHistogram().summary_ms()
    rows = [
        (
            "workload",
            f"{pub['workload']}  transport={pub.get('transport')}  procs={pub.get('procs', 1)}",
        ),
        ("pairs", f"{pub.get('pairs')}  ({pub.get('devices_per_user', 1)} device(s) per user)"),
        ("offered", f"{pub.get('offered_rate')} msgs/s for {pub.get('duration_s')} s"),
        (
            "sent",
            f"{pub.get('sent')}  ({pub.get('send_rate')} msgs/s)  "
            f"unsent={pub.get('unsent')}  send_errors={pub.get('send_errors')}",
        ),
        ("acked", f"{pub.get('acked')}  unacked_at_end={pub.get('unacked')}"),
        (
            "delivered",
            f"{pub.get('delivered')} to receiving devices  "
            f"(echoes to the sender's devices {pub.get('echoed')})",
        ),
        (
            "latency ms",
            f"p50={lat['p50_ms']} p90={lat['p90_ms']} p99={lat['p99_ms']} "
            f"p99.9={lat['p999_ms']} max={lat['max_ms']} mean={lat['mean_ms']}",
        ),
        (
            "ack ms",
            f"p50={ack['p50_ms']} p99={ack['p99_ms']} max={ack['max_ms']} (send call -> ack at the sender)",
        ),
        (
            "queue delay",
            f"max {pub.get('max_queue_delay_us', 0) / 1000:.1f} ms "
            "(due -> send call; large = the bench fell behind)",
        ),
        (
            "bench lag",
            f"event loop woke late by p99 {pub['bench_loop_lag_ms']['p99_ms']} ms, "
            f"max {pub['bench_loop_lag_ms']['max_ms']} ms (machine noise + bench load)",
        ),
        (
            "repl lag",
            "not sampled (no --receiver-url, or no lag metric at its /metrics)"
            if not pub.get("replication_lag")
            else f"max={pub['replication_lag']['max']:g} p99={pub['replication_lag']['p99']:g} "
            f"mean={pub['replication_lag']['mean']:g} entries over "
            f"{pub['replication_lag']['samples']} samples of the receiving region's /metrics",
        ),
        ("reconnects", f"{pub.get('reconnects')} (connections cut by the bench: {pub.get('cuts', 0)})"),
        (
            "dup entries",
            f"{pub.get('duplicate_entries', 0)} inbox entries named a message the device already"
            " had, dropped by the client's per-conversation rule (docs/protocol.md); with"
            " the SDK this also counts overlaps of its own history pulls",
        ),
        (
            "synced",
            f"{pub.get('synced_entries', 0)} inbox entries pulled by the lean clients after a"
            " gap in their inbox or a SyncHint (pushes lost between the tiers)",
        ),
        (
            "bench cpu",
            f"{pub.get('bench_cpu_s')} s over the run, all bench processes "
            f"({pub.get('bench_cpu_pct')}% of one core; "
            f"{pub.get('bench_cpu_us_per_msg')} µs per acked message)",
        ),
        (
            "server cpu",
            "not available (no server PID seen in /proc, no CPU metric at its /metrics)"
            if pub.get("server_cpu_s") is None
            else f"{pub['server_cpu_s']} s from the first send to the last delivery "
            f"({pub.get('server_cpu_us_per_msg')} µs per acked message, fixed costs included; "
            f"from {pub.get('server_cpu_source', '/metrics')})",
        ),
        (
            "history",
            f"{pub.get('history_pages', 0)} pages pulled back and checked, "
            f"{pub.get('history_failed', 0)} failed",
        ),
        ("verdict", pub.get("verdict_summary", "")),
        (
            "result",
            ("CLEAN" if pub.get("clean") else "NOT CLEAN")
            + (
                "; kept up with the offered rate"
                if pub.get("kept_up")
                else f"; did NOT keep up: {pub.get('unsent')} due messages never sent"
            ),
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    tiers = tiercpu.table(pub)
    if tiers:
        lines.append(tiers)
    for err in pub.get("errors", []):
        lines.append(f"{'error'.ljust(width)}  {err}")
    for dev in pub.get("verdict", {}).get("failed_devices", [])[:5]:
        lines.append(
            f"{'failed dev'.ljust(width)}  {dev.get('user')}/{dev.get('device')}: "
            + "; ".join(dev.get("samples", []))
        )
    return "\n".join(lines)


def emit(result: dict[str, Any], json_path: str | None) -> None:
    """Print a bench's result as JSON, and write it to `json_path` too when given."""
    print(json.dumps(result, indent=2))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
