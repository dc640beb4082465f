"""`chatplane ipconf` probes the peer regions' public gateways, so its dispatch lists
them nearest healthy first (`dispatch.by_health`), as `chatplane up` does from its
region link's Hellos. The ipconf tier has no region link (the im tier holds it), and
what a client will reach is the peer's public gateway anyway: each `every_s`, one
`GET /readyz` to the host and port of the peer's `ws` URL (http for ws://, https for
wss://), or a TCP connect to its `tcp` address when it lists no `ws`, within
`timeout_s`. A 200 is healthy, with the round trip as its distance; anything else
(refused, timed out, not ready) lists the region last, still listed, since a client
may reach it when this region does not. The probe sends nothing secret, so it does
not verify the peer's certificate (the client does when it connects).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
from collections.abc import Sequence

import aiohttp

from chatplane.ipconf.dispatch import PeerHealth


def readyz_url(ws_url: str) -> str:
    """The /readyz URL on the host and port of a gateway's WebSocket URL."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/readyz"


def _host_port(tcp: str) -> tuple[str, int]:
    address = tcp.split("://", 1)[-1]
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class GatewayProbes:
    """The peer regions' health as this process last probed it, by region name."""

    def __init__(self, fallbacks: Sequence[dict[str, str]], every_s: float,
                 timeout_s: float) -> None:
        self.fallbacks = list(fallbacks)
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.health: dict[str, PeerHealth] = {}
        self.probes = 0
        self.failures = 0
        self._unverified = ssl.create_default_context()
        self._unverified.check_hostname = False
        self._unverified.verify_mode = ssl.CERT_NONE

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(self._probe(session, g) for g in self.fallbacks))
                await asyncio.sleep(self.every_s)

    async def _probe(self, session: aiohttp.ClientSession, gateway: dict[str, str]) -> None:
        region = gateway.get("region", "")
        started = time.monotonic()
        try:
            ok = await self._reach(session, gateway)
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        self.probes += 1
        self.failures += 0 if ok else 1
        self.health[region] = PeerHealth(ok, time.monotonic() - started if ok else None)

    async def _reach(self, session: aiohttp.ClientSession, gateway: dict[str, str]) -> bool:
        if gateway.get("ws"):
            url = readyz_url(gateway["ws"])
            ssl_context = self._unverified if url.startswith("https") else False
            async with session.get(url, ssl=ssl_context, allow_redirects=False) as response:
                return response.status == 200
        host, port = _host_port(gateway["tcp"])
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout_s)
        writer.close()
        return True
