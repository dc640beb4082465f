"""`chatplane capacity`: pods, database nodes, Redis shards, storage and traffic per region.

Model: users (and so conversation homes, connections and pushes) split over
the regions by their shares; every region stores every message and inbox
entry (active-active replication), so database writes and storage per region
count the whole world's traffic, with all regions' peaks taken to coincide.
Large groups above the threshold add pushes but no inbox rows (read diffusion).

Input: per-pod figures measured by the benches (a JSON file, docs/capacity.md
says which command gives each) and a workload (daily users, messages per
user, peak factor, conversation sizes, regions). Output: what each region
needs at the peak, with `headroom` (the utilisation a pod is planned at)
applied, as a table or `--json`. Anything unusable is refused with one line
on stderr and exit status 2. The arithmetic is in `plan()`, free of I/O.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatplane.planning import groups

FIGURES = {  # name: what it is (per pod or node, at the latency objective)
    "im_msgs_per_s": "messages sequenced and stored per im pod",
    "gateway_connections": "connections one gateway pod holds",
    "gateway_pushes_per_s": "frames pushed to devices per gateway pod",
    "gateway_memory_bytes_per_connection": "resident memory per connection",
    "state_pushes_per_s": "deliveries routed per state pod",
    "db_writes_per_node_s": "row writes per database node",
    "hot_bytes_per_message": "database bytes per stored message (one replica)",
    "inbox_bytes_per_entry": "database bytes per inbox entry (one replica)",
    "archive_bytes_per_message": "segment bytes per archived message",
    "redis_ops_per_shard_s": "commands per Redis shard",
}
DAY_S = 86_400


class CapacityError(ValueError):
    """Input the plan cannot use; its text is the one line printed."""


@dataclass(frozen=True)
class Workload:
    dau: float
    msgs_per_user: float
    peak: float
    distribution: str = "direct=0.7,zipf:2.0:3:10000=0.3"
    devices: float = 1.5  # devices per user (assumed)
    concurrent: float = 0.25  # share of devices connected at the peak (assumed)
    regions: str = "local=1"
    replication_factor: int = 3
    hot_days: float = 30.0  # archive_after_days
    large_group_threshold: int = 500
    headroom: float = 0.7
    redis_ops_per_push: float = 1.0  # a route lookup per push (assumed)


def load_figures(path: str) -> dict[str, float]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CapacityError(f"figures file {path}: {exc}") from exc
    raw = raw.get("figures", raw) if isinstance(raw, dict) else None
    if not isinstance(raw, dict):
        raise CapacityError(f"figures file {path}: want a JSON object of named figures")
    figures: dict[str, float] = {}
    for name in FIGURES:
        value = raw.get(name)
        value = value.get("value") if isinstance(value, dict) else value
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise CapacityError(f"figures file {path}: {name} ({FIGURES[name]}) must be a "
                                f"positive number, got {value!r}")
        figures[name] = float(value)
    return figures


def im_rate_from_direct(path: str) -> float:
    """Messages per second of a clean `chatplane bench direct --json` run."""
    try:
        run = json.loads(Path(path).read_text())
        acked, duration, clean = float(run["acked"]), float(run["duration_s"]), run["clean"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CapacityError(f"bench result {path}: not a `bench direct --json` result ({exc})"
                            ) from exc
    if not clean or acked <= 0 or duration <= 0:
        raise CapacityError(f"bench result {path}: the run was not clean or sent nothing")
    return acked / duration


def parse_regions(text: str) -> dict[str, float]:
    regions: dict[str, float] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, _, share = item.partition("=")
        try:
            regions[name.strip()] = float(share)
        except ValueError:
            raise CapacityError(f"--regions item {item!r}: write NAME=SHARE") from None
    if not regions or any(v <= 0 for v in regions.values()) or abs(sum(regions.values()) - 1) > 1e-6:
        raise CapacityError("--regions shares must be positive and add up to 1")
    return regions


def _check(w: Workload) -> None:
    for name in ("dau", "msgs_per_user", "devices", "hot_days", "redis_ops_per_push"):
        if not getattr(w, name) > 0:
            raise CapacityError(f"--{name.replace('_', '-')} must be positive")
    if w.peak < 1:
        raise CapacityError("--peak is peak over average traffic: at least 1")
    if not 0 < w.concurrent <= 1 or not 0 < w.headroom <= 1:
        raise CapacityError("--concurrent and --headroom must be in (0, 1]")
    if w.replication_factor < 1 or w.large_group_threshold < 2:
        raise CapacityError("--replication-factor must be >= 1, --large-group-threshold >= 2")


def plan(figures: dict[str, float], w: Workload) -> dict[str, Any]:
    """Per region and in total: the pods, nodes and bytes the workload needs."""
    _check(w)
    try:
        parts = groups.parse(w.distribution)
    except groups.DistributionError as exc:
        raise CapacityError(str(exc)) from None
    regions = parse_regions(w.regions)
    small, large = groups.expected_members(parts, w.large_group_threshold)
    f, h = figures, w.headroom
    out: dict[str, Any] = {"members_per_message": {"write_diffusion": round(small, 2),
                                                   "large_groups": round(large, 2)},
                           "regions": {}}
    for name, share in regions.items():
        msgs_day = w.dau * share * w.msgs_per_user
        avg = msgs_day / DAY_S
        peak = avg * w.peak
        # Every region stores every message (docs/architecture: replication),
        # and the peaks are taken to coincide (assumed; the worst case).
        all_peak = w.dau * w.msgs_per_user / DAY_S * w.peak
        all_day = w.dau * w.msgs_per_user
        inbox_peak = all_peak * small  # one inbox row per member (sender included)
        pushes_peak = peak * (small + large) * w.devices * w.concurrent
        connections = w.dau * share * w.devices * w.concurrent
        hot_day = all_day * (f["hot_bytes_per_message"] + small * f["inbox_bytes_per_entry"])
        wire = f["hot_bytes_per_message"]
        out["regions"][name] = {
            "messages_per_s": {"average": round(avg), "peak": round(peak)},
            "pushes_per_s_peak": round(pushes_peak),
            "connections_peak": round(connections),
            "im_pods": math.ceil(peak / (f["im_msgs_per_s"] * h)),
            "gateway_pods": math.ceil(max(connections / (f["gateway_connections"] * h),
                                          pushes_peak / (f["gateway_pushes_per_s"] * h))),
            "gateway_memory_bytes": round(connections * f["gateway_memory_bytes_per_connection"]),
            "state_pods": math.ceil(pushes_peak / (f["state_pushes_per_s"] * h)),
            "database_nodes": max(w.replication_factor, math.ceil(
                (all_peak + inbox_peak) * w.replication_factor / (f["db_writes_per_node_s"] * h))),
            "redis_shards": math.ceil(pushes_peak * w.redis_ops_per_push
                                      / (f["redis_ops_per_shard_s"] * h)),
            "hot_bytes_per_day": round(hot_day * w.replication_factor),
            "hot_bytes_held": round(hot_day * w.replication_factor * w.hot_days),
            "archive_bytes_per_day": round(all_day * f["archive_bytes_per_message"]),
            "cross_region_bytes_per_s": {  # this region's messages, shipped to each other one
                "average": round(avg * wire * (len(regions) - 1)),
                "peak": round(peak * wire * (len(regions) - 1))},
        }
    totals: dict[str, float] = {}
    for region in out["regions"].values():
        for key, value in region.items():
            if isinstance(value, int | float):
                totals[key] = totals.get(key, 0) + value
    out["total"] = totals
    out["workload"] = asdict(w)
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def table(result: dict[str, Any]) -> str:
    rows = ["im_pods", "gateway_pods", "state_pods", "database_nodes", "redis_shards",
            "connections_peak", "pushes_per_s_peak", "gateway_memory_bytes",
            "hot_bytes_per_day", "hot_bytes_held", "archive_bytes_per_day"]
    names = list(result["regions"])
    lines = [f"{'':24}" + "".join(f"{n:>16}" for n in [*names, "total"])]
    for row in rows:
        values = [result["regions"][n][row] for n in names] + [result["total"][row]]
        shown = [_size(v) if row.endswith("bytes") or "bytes_" in row else f"{v:,.0f}"
                 for v in values]
        lines.append(f"{row:24}" + "".join(f"{s:>16}" for s in shown))
    for n in names:
        r = result["regions"][n]
        lines.append(f"{n}: {r['messages_per_s']['average']:,} msgs/s average, "
                     f"{r['messages_per_s']['peak']:,} at peak; cross-region out "
                     f"{_size(r['cross_region_bytes_per_s']['peak'])}/s at peak")
    m = result["members_per_message"]
    lines.append(f"members reached per message: {m['write_diffusion']} (inbox), "
                 f"{m['large_groups']} (large groups, read diffusion)")
    return "\n".join(lines)


def cmd_capacity(args: argparse.Namespace) -> int:
    try:
        figures = load_figures(args.figures)
        if args.direct_json:
            figures["im_msgs_per_s"] = im_rate_from_direct(args.direct_json)
        workload = Workload(**{k: getattr(args, k) for k in Workload.__dataclass_fields__})
        result = plan(figures, workload)
    except CapacityError as exc:
        print(f"chatplane capacity: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("capacity", help="pods, nodes, shards, storage per region for a "
                              "workload, from measured per-pod figures (docs/capacity.md)")
    d = Workload(0, 0, 0)
    p.add_argument("--figures", required=True, help="JSON of per-pod figures (docs/capacity.md)")
    p.add_argument("--direct-json", help="a `bench direct --json` result: its rate is im_msgs_per_s")
    p.add_argument("--dau", type=float, required=True, help="daily active users, e.g. 1e9")
    p.add_argument("--msgs-per-user", type=float, required=True)
    p.add_argument("--peak", type=float, required=True, help="peak over average traffic")
    p.add_argument("--group-size-distribution", dest="distribution", default=d.distribution,
                   help=f"shares of messages by conversation size (default {d.distribution})")
    for name in ("devices", "concurrent", "hot_days", "headroom", "redis_ops_per_push"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--regions", default=d.regions, help="NAME=SHARE,... of the users")
    p.add_argument("--replication-factor", type=int, default=d.replication_factor)
    p.add_argument("--large-group-threshold", type=int, default=d.large_group_threshold)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_capacity)
