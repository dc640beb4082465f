"""A server's /metrics as the benches read it: one parser, and the
differences of counters and histograms between two reads around a run.
/metrics is on the admin port (docs/admin-api.md): `admin_url` finds it."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp

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
    """Prometheus text -> {name (with its labels, if any): value}."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                found[name] = float(value)
            except ValueError:
                pass
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
         ndigits: int = 1) -> float | None:
    """A histogram's mean over what it observed between the two reads (None: nothing)."""
    count = delta(before, after, f"{histogram}_count")
    total = delta(before, after, f"{histogram}_sum")
    return round(total / count, ndigits) if count > 0 else None
