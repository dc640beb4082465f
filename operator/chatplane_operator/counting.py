"""Live connection counts, read from each running gateway pod's `GET /admin/drain`.

The gateway answers `{"draining": bool, "connections": N}` on its HTTP port without the admin
secret. Running pods count whether ready or not: a draining gateway reports not-ready yet
still holds the connections it is sending away. A pod that does not answer within the
timeout counts as 0 and is logged; counting never fails a reconcile.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from chatplane_operator import api
from chatplane_operator.applying import ApiError, Applier
from chatplane_operator.specs import naming

log = logging.getLogger(__name__)


def tier_pods(applier: Applier, cluster: api.ChatCluster, region: api.Region,
              tier: str) -> list[dict[str, Any]]:
    """The pods of one tier of `region` (every phase)."""
    sel = ",".join(f"{k}={v}" for k, v in naming.selector(cluster, region, tier).items())
    return list(applier.list("Pod", cluster.namespace, sel))


def running_url(pod: dict[str, Any], port: int) -> str | None:
    """`http://<podIP>:<port>` of a running pod (terminating ones too: they may be
    draining); None while it has no IP or does not run."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running":
        return None
    host = f"[{ip}]" if ":" in str(ip) else ip
    return f"http://{host}:{port}"


class HttpConnectionCounter:
    """`ConnectionCounter` that asks every running gateway pod of a region."""

    def __init__(self, applier: Applier, timeout: float = 1.0, workers: int = 8) -> None:
        self._applier = applier
        self._timeout = timeout
        self._workers = workers

    def _one(self, base: str) -> int:
        url = f"{base}/admin/drain"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as resp:
                return int(json.load(resp).get("connections", 0))
        except (urllib.error.URLError, OSError, ValueError, TypeError) as exc:
            log.debug("no connection count from %s: %s", url, exc)
            return 0

    def __call__(self, cluster: api.ChatCluster, region: api.Region) -> int:
        try:
            pods = tier_pods(self._applier, cluster, region, "gateway")
        except ApiError as exc:
            log.warning("cannot list gateway pods of %s/%s: %s", cluster.name, region.name, exc)
            return 0
        urls = [u for u in (running_url(p, cluster.ports.http) for p in pods) if u]
        if not urls:
            return 0
        workers = min(self._workers, len(urls))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(self._one, urls))
