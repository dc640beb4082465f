"""Peer reports, read from `GET /v1/peers` on every running im pod of a region.

The operator pulls (as it pulls connection counts from the gateways) rather than having
the data plane push into the API: pods run without a service-account token, so nothing
in the data plane needs Kubernetes credentials, and a report is as fresh as the pass
that reads it (every `--resync-seconds`, and on every change of a child). A pod that does
not answer within the timeout is reported as silent; reading never fails a reconcile.
A NetworkPolicy around the im pods must let the operator reach their HTTP port.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import urllib.error
import urllib.request

from chatplane_operator import api
from chatplane_operator.applying import ApiError, Applier
from chatplane_operator.counting import running_url, tier_pods
from chatplane_operator.reachability import PodReport, RegionPeers, summarize

log = logging.getLogger(__name__)


def _pods(applier: Applier, cluster: api.ChatCluster, region: api.Region) -> list[tuple[str, str]]:
    """(name, base URL) of the region's running im pods."""
    pods = tier_pods(applier, cluster, region, "im")
    urls = ((str(p["metadata"]["name"]), running_url(p, cluster.ports.http)) for p in pods)
    return [(name, url) for name, url in urls if url]


class HttpPeerReader:
    """`PeerReader` that asks every running im pod of a region for its `/v1/peers`."""

    def __init__(self, applier: Applier, timeout: float = 1.0, workers: int = 8) -> None:
        self._applier = applier
        self._timeout = timeout
        self._workers = workers

    def _one(self, pod: str, base: str) -> PodReport:
        url = f"{base}/v1/peers"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as resp:
                body = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return PodReport(pod, error=f"GET {url}: {exc}")
        if not isinstance(body, dict):
            return PodReport(pod, error=f"GET {url}: not a peer report")
        return PodReport(pod, body)

    def __call__(self, cluster: api.ChatCluster, region: api.Region) -> RegionPeers | None:
        try:
            pods = _pods(self._applier, cluster, region)
        except ApiError as exc:
            log.warning("cannot list im pods of %s/%s: %s", cluster.name, region.name, exc)
            return None
        if not pods:
            return RegionPeers()
        with concurrent.futures.ThreadPoolExecutor(min(self._workers, len(pods))) as pool:
            reports = list(pool.map(lambda p: self._one(*p), pods))
        return summarize(reports)
