"""Whether a region's data plane reaches its peers, as its im pods report it (`GET
/v1/peers`; the im tier probes every peer with `Region.Hello`). Pure: the pods' reports
in, one `RegionPeers` out; `podreading.py` fetches them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from chatplane_operator import api, lags

OK, MISMATCH, UNREACHABLE = "ok", "mismatch", "unreachable"
MISSING = "missing"  # a region without a report, or a peer not (yet) in every pod's list
_WORSE = {OK: 0, MISMATCH: 1, UNREACHABLE: 2}


@dataclasses.dataclass(frozen=True)
class PodReport:
    """One im pod's `/v1/peers` body, or why there is none."""

    pod: str
    body: Mapping[str, Any] | None = None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class PeerSeen:
    state: str  # OK, MISMATCH or UNREACHABLE: the worst over the region's im pods; MISSING
    detail: str = ""  # the error, with the pod that saw it


@dataclasses.dataclass(frozen=True)
class RegionPeers:
    """One region's view of its peers, over the im pods that answered."""

    answered: tuple[str, ...] = ()  # pods that reported
    silent: tuple[str, ...] = ()  # "pod: why", pods that did not
    peers: Mapping[str, PeerSeen] = dataclasses.field(default_factory=dict)
    # how far behind this region applies each peer's log (only where the data plane
    # replicates its own log: lags.py)
    lags: Mapping[str, lags.PeerLag] = dataclasses.field(default_factory=dict)

    def seen(self, peer: str) -> PeerSeen | None:
        """None: no answering pod lists this peer (a pod not yet rolled to the new list)."""
        return self.peers.get(peer)


def _state(view: Mapping[str, Any]) -> PeerSeen:
    if view.get("ok") is True:
        return PeerSeen(OK)
    state = MISMATCH if view.get("reachable") is True else UNREACHABLE
    return PeerSeen(state, str(view.get("error") or state))


def summarize(reports: Sequence[PodReport]) -> RegionPeers:
    """A peer is OK for a region when every answering im pod says so; otherwise the worst
    state any pod saw, with that pod's error. A pod listing no such peer does not count
    (it runs an older peer list: `RegionPeers.seen` then says None if no pod lists it)."""
    answered, silent = [], []
    peers: dict[str, PeerSeen] = {}
    behind: dict[str, lags.PeerLag] = {}
    listed: dict[str, int] = {}
    for report in reports:
        views = (report.body or {}).get("peers")
        if report.body is None or not isinstance(views, list):
            silent.append(f"{report.pod}: {report.error or 'no peer report'}")
            continue
        answered.append(report.pod)
        for view in views:
            if not isinstance(view, Mapping) or "name" not in view:
                continue
            name, seen = str(view["name"]), _state(view)
            lag = lags.of_view(view.get("replication"), report.pod)
            if lag is not None:
                behind[name] = lags.worse(behind.get(name), lag)
            listed[name] = listed.get(name, 0) + 1
            if seen.state != OK:
                seen = PeerSeen(seen.state, f"{seen.detail} (pod {report.pod})")
            old = peers.get(name)
            if old is None or _WORSE[seen.state] > _WORSE[old.state]:
                peers[name] = seen
    for name, count in listed.items():  # listed by some answering pods only
        if count < len(answered) and peers[name].state == OK:
            peers[name] = PeerSeen(MISSING, "not listed by every im pod yet")
    return RegionPeers(tuple(answered), tuple(silent), peers, behind)


SEVERITY = (UNREACHABLE, MISMATCH, MISSING)


def problems(expected: Mapping[str, Sequence[str]],
             views: Mapping[str, RegionPeers | None]) -> list[tuple[str, str]]:
    """(kind, "region → peer: why") for every peer a region should see and does not, the
    most severe kind first. `expected`: region -> the peers in its CHATPLANE_PEERS."""
    out: list[tuple[str, str]] = []
    for region, peers in expected.items():
        if not peers:
            continue
        view = views.get(region)
        if view is None or not view.answered:
            why = "; ".join(view.silent) if view is not None and view.silent else "no running im pod"
            out.append((MISSING, f"{region}: no peer report ({why})"))
            continue
        for peer in peers:
            seen = view.seen(peer)
            if seen is None:
                out.append((MISSING, f"{region} → {peer}: not in its peer list yet"))
            elif seen.state != OK:
                out.append((seen.state, f"{region} → {peer}: {seen.detail}"))
    return sorted(out, key=lambda p: SEVERITY.index(p[0]))


STATUS_STATES = {OK: "Reachable", UNREACHABLE: "Unreachable", MISMATCH: "Mismatch",
                 MISSING: "NotListed"}


def status_rows(peers: Sequence[str], view: RegionPeers,
                bounds: api.Replication) -> list[dict[str, Any]]:
    """`status.regions[].peers`: what the region's im pods say of each peer it should see
    (and, where they replicate its log, how far behind: `replication`)."""
    rows: list[dict[str, Any]] = []
    for peer in peers:
        seen = view.seen(peer)
        if seen is None:
            rows.append({"name": peer, "state": "NotListed",
                         "message": "no im pod lists this peer yet"})
            continue
        row: dict[str, Any] = {"name": peer, "state": STATUS_STATES[seen.state],
                               "message": seen.detail}
        lag = view.lags.get(peer)
        if lag is not None:
            row["replication"] = lags.status_row(lag, bounds)
        rows.append(row)
    return rows
