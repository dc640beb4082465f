"""Which peered replica may write: the one kopf's peering elects (highest live priority).

kopf pauses the watch streams of a replica that sees a higher-priority peer, but the work
queue's resync passes are the operator's own, so each pass first asks `PeeringGate.active()`.
kopf records peers in the `status` of a (Cluster)KopfPeering object:
`{identity: {priority, lifetime, lastseen}}`; priorities are unique per replica (see
`__main__.priority`), so the entry with our priority is ours.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from chatplane_operator.applying import ApiError, Applier

log = logging.getLogger(__name__)


def _alive(entry: Mapping[str, Any], now: datetime.datetime) -> bool:
    try:
        seen = datetime.datetime.fromisoformat(str(entry["lastseen"]))
        lifetime = datetime.timedelta(seconds=int(entry.get("lifetime", 60)))
    except (KeyError, ValueError, TypeError):
        return False
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.UTC)
    return seen + lifetime > now


def outranked(status: Mapping[str, Any] | None, priority: int,
              now: datetime.datetime | None = None) -> bool:
    """True when a live peer in a peering `status` has a higher priority than ours."""
    now = now or datetime.datetime.now(datetime.UTC)
    for entry in (status or {}).values():
        if isinstance(entry, Mapping) and _alive(entry, now):
            if int(entry.get("priority", 0)) > priority:
                return True
    return False


class PeeringGate:
    """Reads the peering object(s) before a pass; without peering every pass may run."""

    def __init__(self, applier: Applier, name: str, priority: int,
                 namespaces: list[str]) -> None:
        self._applier = applier
        self.name = name
        self.priority = priority
        self._namespaces = namespaces  # empty: the cluster-wide peering

    def active(self) -> bool:
        try:
            if not self._namespaces:
                obj = self._applier.get_cluster_scoped("ClusterKopfPeering", self.name)
                return not outranked((obj or {}).get("status"), self.priority)
            for namespace in self._namespaces:
                obj = self._applier.get("KopfPeering", namespace, self.name)
                if outranked((obj or {}).get("status"), self.priority):
                    return False
        except ApiError as exc:  # cannot tell: let kopf's own pause decide
            log.warning("cannot read peering %s: %s", self.name, exc)
        return True
