"""CPU per message per tier of a `chatplane cluster up` deployment.

`cluster up` writes `<workdir>/cluster.json` (chatplane/cluster.py): each
member's name, tier and PID, and Redis's. `bench direct --cluster <workdir>`
reads it, reads every process's CPU time from /proc around the offering
window (as it reads one server's, procstat.py), and reports CPU µs per acked
message per process, per tier (gateway, im, state, ipconf, redis-server) and
summed: in a cluster the cost of a message is spread over the tiers and the
hops between them.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatplane.bench import procstat

STATE_FILE = "cluster.json"  # chatplane.cluster.STATE_FILE (the bench does not import the launcher)
REDIS_TIER = "redis-server"
TIER_ORDER = ("gateway", "im", "state", "ipconf", REDIS_TIER)


class NoCluster(ValueError):
    """No readable cluster.json in the directory given."""


@dataclass(frozen=True)
class Deployment:
    dispatch: str
    data_dir: str
    tiers: dict[str, str]  # process name -> tier
    pids: dict[str, int]  # process name -> PID


def load(workdir: str) -> Deployment:
    """The processes of the cluster running in `workdir` (its `cluster up --data-dir`)."""
    path = Path(workdir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
        members = state["members"]
        dispatch, data_dir = str(state["dispatch"]), str(state["data_dir"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NoCluster(f"no running cluster in {workdir} ({path}: {exc})") from exc
    tiers = {str(m["name"]): str(m["tier"]) for m in members}
    pids = {str(m["name"]): int(m.get("pid") or 0) for m in members}
    redis = state.get("redis") or {}
    redis_pid = int(redis.get("pid") or 0)
    if not redis_pid:  # an external Redis: seen only when it listens on this machine
        parsed = urllib.parse.urlsplit(str(redis.get("url") or ""))
        if parsed.hostname in ("127.0.0.1", "localhost", "::1") and parsed.port:
            redis_pid = procstat.listener_pid(parsed.port) or 0
    if redis_pid:
        tiers["redis"], pids["redis"] = REDIS_TIER, redis_pid
    return Deployment(dispatch, data_dir, tiers, {n: p for n, p in pids.items() if p})


def read(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds of each process now (None: gone)."""
    return {name: procstat.cpu_seconds(pid) for name, pid in pids.items()}


def spent(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """CPU seconds each process spent in between; a process that was gone
    at either end (restarted: another PID) is left out."""
    out: dict[str, float] = {}
    for name, start in before.items():
        end = after.get(name)
        if start is not None and end is not None:
            out[name] = round(end - start, 3)
    return out


def per_message(processes_cpu_s: dict[str, float], tiers: dict[str, str],
                acked: int) -> dict[str, Any]:
    """µs per acked message by process and by tier, and the sum (fixed costs included)."""
    if not acked:
        return {}
    by_process = {n: round(s * 1e6 / acked) for n, s in sorted(processes_cpu_s.items())}
    tier_s: dict[str, float] = {}
    for name, seconds in processes_cpu_s.items():
        tier = tiers.get(name, name)
        tier_s[tier] = tier_s.get(tier, 0.0) + seconds
    order = [t for t in TIER_ORDER if t in tier_s] + sorted(set(tier_s) - set(TIER_ORDER))
    return {
        "processes": by_process,
        "tiers": {t: round(tier_s[t] * 1e6 / acked) for t in order},
        "tiers_cpu_s": {t: round(tier_s[t], 3) for t in order},
        "total": round(sum(processes_cpu_s.values()) * 1e6 / acked),
    }


def table(pub: dict[str, Any]) -> str:
    """One row per tier (its processes beside it) and the sum."""
    cost = pub.get("tier_cpu_us_per_msg") or {}
    if not cost:
        return ""
    tiers: dict[str, str] = pub.get("cpu_tiers", {})
    lines = ["tier           cpu_s  us/msg  share  processes (us/msg)"]
    total = cost["total"] or 1
    for tier, us in cost["tiers"].items():
        members = " ".join(f"{n}={v}" for n, v in cost["processes"].items()
                           if tiers.get(n, n) == tier)
        lines.append(f"{tier:<12} {cost['tiers_cpu_s'][tier]:>7.3f}  {us:>6}  "
                     f"{100 * us / total:>4.0f}%  {members}")
    lines.append(f"{'sum':<12} {sum(cost['tiers_cpu_s'].values()):>7.3f}  {cost['total']:>6}  "
                 f" 100%  (per acked message, first send to last delivery)")
    return "\n".join(lines)
