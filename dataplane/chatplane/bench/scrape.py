"""A server's /metrics as the benches read it: one parser, and the
differences of counters and histograms between two reads around a run."""

from __future__ import annotations

import aiohttp

from chatplane.client.links import tls_context


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
    """The server's /metrics at base URL `url` (https: verified against `ca`, else
    the system CAs); {} when it cannot be read."""
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
