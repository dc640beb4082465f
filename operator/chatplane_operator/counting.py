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


def running_pod_ips(pods: list[dict[str, Any]]) -> list[str]:
    """IPs of the pods that run (terminating ones too: they may be draining)."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            out.append(str(status["podIP"]))
    return out


class HttpConnectionCounter:
    """`ConnectionCounter` that asks every running gateway pod of a region."""

    def __init__(self, applier: Applier, timeout: float = 1.0, workers: int = 8) -> None:
        self._applier = applier
        self._timeout = timeout
        self._workers = workers

    def _one(self, ip: str, port: int) -> int:
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{port}/admin/drain"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as resp:
                return int(json.load(resp).get("connections", 0))
        except (urllib.error.URLError, OSError, ValueError, TypeError) as exc:
            log.debug("no connection count from %s: %s", url, exc)
            return 0

    def __call__(self, cluster: api.ChatCluster, region: api.Region) -> int:
        sel = ",".join(f"{k}={v}" for k, v in naming.selector(cluster, region, "gateway").items())
        try:
            pods = self._applier.list("Pod", cluster.namespace, sel)
        except ApiError as exc:
            log.warning("cannot list gateway pods of %s/%s: %s", cluster.name, region.name, exc)
            return 0
        ips = running_pod_ips(pods)
        if not ips:
            return 0
        workers = min(self._workers, len(ips))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(lambda ip: self._one(ip, cluster.ports.http), ips))
