"""A server's /metrics as the benches read it: one parser, and the
differences of counters and histograms between two reads around a run.
/metrics is on the admin port (docs/admin-api.md): `admin_url` finds it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from chatplane.client.links import tls_context


def admin_url(url: str, given: str = "") -> str:
    """The admin port's base URL of the server at public base URL `url`:
    `given` when set, else the same host at port + 1 (`chatplane up`'s and
    `cluster up`'s layout)."""
    if given:
        return given.rstrip("/")
    parts = urlsplit(url.rstrip("/"))
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    # the admin port is plain HTTP even when the public port serves TLS
    return urlunsplit(("http", f"{host}:{port + 1}", "", "", ""))


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name with its labels, if any: value}, read by
    prometheus_client's parser: `chatplane_cql_requests_total{kind="append"}`,
    `chatplane_send_latency_seconds_count`."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return found


async def read(url: str, ca: str = "") -> dict[str, float]:
    """/metrics at admin base URL `url` (see `admin_url`; https: verified against
    `ca`, else the system CAs); {} when it cannot be read."""
    try:
        async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                    http.get(url.rstrip("/") + "/metrics",
                             ssl=tls_context(ca) if ca else True) as reply):
            return parse(await reply.text())
    except (aiohttp.ClientError, TimeoutError, OSError):
        return {}


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def mean(before: dict[str, float], after: dict[str, float], histogram: str,
         ndigits: int = 1, scale: float = 1.0) -> float | None:
    """A histogram's mean over what it observed between the two reads, times `scale`
    (1000: a histogram in seconds, reported in ms); None: nothing observed."""
    count = delta(before, after, f"{histogram}_count")
    total = delta(before, after, f"{histogram}_sum")
    return round(total * scale / count, ndigits) if count > 0 else None
