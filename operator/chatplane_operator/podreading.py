"""What a reconcile pass reads from the data plane's pods, in one batch with one deadline.

A pass reads two things over HTTP, from the running pods of every region it applied: each
gateway's live connections (`GET /admin/drain` on its admin port, with the admin secret:
`{"draining": bool, "connections": N}`)
and each im pod's peer report (`GET /v1/peers`). Both are read here, once per pod per
pass, every pod at once, under one deadline for the whole batch: a dead or hanging pod
costs the pass that deadline once, however many pods are down, and a pod that has not
answered by then is given up on (its connection closed), never waited for. The status
counts it as 0 connections / no peer report, and one log line names every pod that failed.
The rollout step and the status both use these reads, so a gateway is not asked twice.

The operator pulls rather than having the data plane push into the API: pods run without a
service-account token, so nothing in the data plane needs Kubernetes credentials. A
NetworkPolicy around those pods must let the operator reach their HTTP port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

from chatplane_operator import api, reachability
from chatplane_operator.applying import ApiError, Applier
from chatplane_operator.counting import admin_access, connections_in, running_url, tier_pods
from chatplane_operator.peerreports import pod_report

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
PATHS = {"gateway": "/admin/drain", "im": "/v1/peers"}
# The tiers read on the admin port (`ports.admin`, with the admin secret); the others on the
# HTTP port.
ADMIN_PORT_TIERS: frozenset[str] = frozenset({"gateway", "im"})
Pod = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Answer:
    """One pod's JSON answer, or why there is none."""

    body: Any = None
    error: str = ""


async def _get(session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]) -> Answer:
    try:
        async with session.get(url, headers=headers) as response:
            response.raise_for_status()
            return Answer(await response.json(content_type=None))
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Answer(error=f"GET {url}: {exc or type(exc).__name__}")


async def fetch_all(urls: Mapping[K, str], deadline_s: float,
                    headers: Mapping[K, Mapping[str, str]] | None = None) -> dict[K, Answer]:
    """GET every URL at once (with its `headers`, if any); what has not answered within
    `deadline_s` is cancelled."""
    if not urls:
        return {}
    # No per-request timeout and no proxy from the environment: the deadline bounds them
    # all, and pod IPs are reached directly.
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = {key: asyncio.ensure_future(_get(session, url, (headers or {}).get(key, {})))
                 for key, url in urls.items()}
        _, late = await asyncio.wait(tasks.values(), timeout=deadline_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    late_answer = f"no answer within {deadline_s:g}s"
    return {key: Answer(error=f"GET {urls[key]}: {late_answer}") if task.cancelled()
            else task.result() for key, task in tasks.items()}


def read_all(urls: Mapping[K, str], deadline_s: float,
             headers: Mapping[K, Mapping[str, str]] | None = None) -> dict[K, Answer]:
    """`fetch_all` for the reconciler's worker thread (it runs no event loop)."""
    return asyncio.run(fetch_all(urls, deadline_s, headers))


@dataclasses.dataclass(frozen=True)
class RegionReads:
    """What one pass read of one region: its gateway pods (every phase), each running
    gateway's connections (None: it did not answer) and its im pods' peer reports."""

    gateways: tuple[Pod, ...] = ()
    connections: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
    peers: reachability.RegionPeers | None = None  # None: the im pods could not be listed
    listed: bool = True  # False: the gateway pods could not be listed

    @property
    def total(self) -> int:
        return sum(n or 0 for n in self.connections.values())


# Reading is a narrow interface: (cluster, the regions to read) -> region name -> reads.
Reader = Callable[[api.ChatCluster, Sequence[api.Region]], dict[str, RegionReads]]
Key = tuple[str, str, str]  # (region, tier, pod)


def targets(cluster: api.ChatCluster, pods: Mapping[tuple[str, str], Sequence[Pod]],
            ) -> dict[Key, str]:
    """The URL to read for every running pod of `pods` ((region, tier) -> pods)."""
    out: dict[Key, str] = {}
    for (region, tier), listed in pods.items():
        for pod in listed:
            port = cluster.ports.admin if tier in ADMIN_PORT_TIERS else cluster.ports.http
            base = running_url(pod, port)
            if base:
                out[region, tier, str(pod["metadata"]["name"])] = base + PATHS[tier]
    return out


def region_reads(region: str, pods: Mapping[tuple[str, str], Sequence[Pod] | None],
                 answers: Mapping[Key, Answer]) -> RegionReads:
    """Pure: one region's reads from its listed pods and the batch's answers."""
    gateways = pods.get((region, "gateway"))
    ims = pods.get((region, "im"))
    mine = {k[1:]: a for k, a in answers.items() if k[0] == region}
    counts = {pod: connections_in(a.body) if not a.error else None
              for (tier, pod), a in mine.items() if tier == "gateway"}
    peers = None
    if ims is not None:
        peers = reachability.summarize([pod_report(pod, a.body, a.error)
                                        for (tier, pod), a in mine.items() if tier == "im"])
    return RegionReads(tuple(gateways or ()), counts, peers, listed=gateways is not None)


class HttpReader:
    """`Reader` over the API (to list the pods) and the pods' HTTP ports."""

    def __init__(self, applier: Applier, deadline_s: float = 1.0) -> None:
        self._applier = applier
        self.deadline_s = deadline_s

    def _list(self, cluster: api.ChatCluster, region: api.Region, tier: str) -> list[Pod] | None:
        try:
            return tier_pods(self._applier, cluster, region, tier)
        except ApiError as exc:
            log.warning("cannot list %s pods of %s/%s: %s", tier, cluster.name, region.name, exc)
            return None

    def __call__(self, cluster: api.ChatCluster,
                 regions: Sequence[api.Region]) -> dict[str, RegionReads]:
        pods = {(r.name, tier): self._list(cluster, r, tier) for r in regions for tier in PATHS}
        urls = targets(cluster, {k: v for k, v in pods.items() if v is not None})
        admin = [k for k in urls if k[1] in ADMIN_PORT_TIERS]
        secret = admin_access(self._applier, cluster).headers() if admin else {}
        answers = read_all(urls, self.deadline_s, dict.fromkeys(admin, secret))
        failed = sorted(f"{k[2]} ({a.error})" for k, a in answers.items() if a.error)
        if failed:
            log.warning("%s: %d of %d pods did not answer: %s", cluster.name, len(failed),
                        len(answers), "; ".join(failed))
        return {r.name: region_reads(r.name, pods, answers) for r in regions}
