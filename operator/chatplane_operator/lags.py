"""How far behind each region applies each peer's replicated log, as its im pods report it
(`GET /v1/peers`, per peer `replication`: dataplane/chatplane/regions/replication.py), and
whether that is within the ChatCluster's bounds (`spec.replication`). Pure: the pods'
`replication` sections in, one `PeerLag` per peer and the problems out.

A data plane that replicates its own log (the embedded store) reports its pullers'
`replication`; on a multi-datacenter keyspace the database carries the data and the
section is the notice follower's (regions/notices.py: `lag` in notices, the same
fields but `trimmed_past_cursor`), reported by the one im pod that follows the peer
(im/regionjobs.py; the others report none), so the same rules judge it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from chatplane_operator import api

IN_SYNC, LAGGING, STALLED, TRIMMED = "InSync", "Lagging", "Stalled", "Trimmed"


@dataclasses.dataclass(frozen=True)
class PeerLag:
    """One region's copy of one peer's log: the worst over the im pods that report it."""

    lag: int  # the peer's log positions not applied here yet
    applied_to: int
    peer_head: int
    last_batch_s_ago: float | None  # None: no batch (nor heartbeat) since the pod started
    connected: bool
    trimmed: bool  # the peer trimmed its log past this region's cursor: only a resync helps
    error: str = ""
    pod: str = ""


def of_view(section: Any, pod: str) -> PeerLag | None:
    """The `replication` section of one peer in one pod's `/v1/peers`; None without one."""
    if not isinstance(section, Mapping):
        return None
    ago = section.get("last_batch_s_ago")
    return PeerLag(lag=int(section.get("lag") or 0),
                   applied_to=int(section.get("applied_to") or 0),
                   peer_head=int(section.get("peer_head") or 0),
                   last_batch_s_ago=None if ago is None else float(ago),
                   connected=bool(section.get("connected")),
                   trimmed=bool(section.get("trimmed_past_cursor")),
                   error=str(section.get("error") or ""), pod=pod)


def _badness(lag: PeerLag) -> tuple[bool, float, int]:
    silence = float("inf") if lag.last_batch_s_ago is None else lag.last_batch_s_ago
    return lag.trimmed, silence, lag.lag


def worse(old: PeerLag | None, new: PeerLag) -> PeerLag:
    """The one to show of two pods' views: trimmed first, then the older last batch, then
    the larger lag (an im pod further behind holds its region back)."""
    if old is None:
        return new
    return new if _badness(new) > _badness(old) else old


def judge(lag: PeerLag, bounds: api.Replication) -> tuple[str, str]:
    """(state, why) of one region's copy of one peer's log; why is "" when InSync."""
    if lag.trimmed:
        return TRIMMED, (f"the peer trimmed its log past position {lag.applied_to} applied "
                         "here: only a copy of a surviving store brings the gap")
    if lag.last_batch_s_ago is None or lag.last_batch_s_ago > bounds.max_silence_seconds:
        silent = ("no batch yet" if lag.last_batch_s_ago is None
                  else f"last batch {lag.last_batch_s_ago:.1f} s ago")
        error = f", {lag.error}" if lag.error else ""
        return STALLED, (f"lag {lag.lag} entries, {silent} "
                         f"(max {bounds.max_silence_seconds} s){error}")
    if lag.lag > bounds.max_lag_entries:
        return LAGGING, f"lag {lag.lag} entries (max {bounds.max_lag_entries})"
    return IN_SYNC, ""


def problems(expected: Mapping[str, Sequence[str]],
             lags: Mapping[str, Mapping[str, PeerLag]], bounds: api.Replication) -> list[str]:
    """"region ← peer: why (pod)" for every peer whose log a region applies out of bounds.
    `lags`: region -> peer -> its lag; a pair without a report is not judged here."""
    out = []
    for region, peers in expected.items():
        for peer in peers:
            lag = lags.get(region, {}).get(peer)
            if lag is None:
                continue
            state, why = judge(lag, bounds)
            if state != IN_SYNC:
                out.append(f"{region} ← {peer}: {why} (pod {lag.pod})")
    return out


def status_row(lag: PeerLag, bounds: api.Replication) -> dict[str, Any]:
    """`status.regions[].peers[].replication`."""
    state, _ = judge(lag, bounds)
    row: dict[str, Any] = {"state": state, "lag": lag.lag, "appliedTo": lag.applied_to,
                           "peerHead": lag.peer_head, "connected": lag.connected}
    if lag.last_batch_s_ago is not None:
        row["lastBatchSecondsAgo"] = int(lag.last_batch_s_ago)
    return row
