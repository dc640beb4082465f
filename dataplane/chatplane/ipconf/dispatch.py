"""`GET /v1/dispatch?uid=`: a ranked list of gateway endpoints for a client.

Clients always start here, so the fleet can grow, shrink and drain without
clients knowing addresses. A `GatewayDirectory` says which gateways exist and
how loaded they are; `rank` orders them (pure, so it is tested alone). Other
regions' public gateways (the peer list's `ws`/`tcp`) follow this region's own,
as fallbacks: a client whose gateways here all fail tries them next, and one
whose region is lost keeps them from its last answer (docs/architecture.md
"Failover").
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from chatplane import peerlist
from chatplane.storage.base import valid_id


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    gateway_id: str
    ws_url: str
    tcp_address: str  # host:port, or "" when the gateway has no TCP listener
    connections: int
    load: float  # 0..1, the gateway's own estimate (CPU)
    draining: bool


class GatewayDirectory(Protocol):
    async def gateways(self) -> Sequence[GatewayInfo]: ...


def rank(gateways: Sequence[GatewayInfo], uid: str, limit: int = 3) -> list[GatewayInfo]:
    """Least loaded first, draining ones never. Near-equal gateways are
    ordered by a hash of the uid, so a crowd does not herd onto one."""
    live = [g for g in gateways if not g.draining]

    def score(g: GatewayInfo) -> tuple[int, int, str]:
        bucket = g.connections // 100  # windowed: 100 connections is "the same"
        busy = int(g.load * 4)  # CPU in quarters of a core: noise is not a difference
        spread = hashlib.blake2b(f"{uid}/{g.gateway_id}".encode(), digest_size=4).hexdigest()
        return (bucket, busy, spread)

    return sorted(live, key=score)[:limit]


class LocalDirectory:
    """The gateways of this process (`chatplane up`), read live."""

    def __init__(self, read: Callable[[], Sequence[GatewayInfo]]) -> None:
        self._read = read

    async def gateways(self) -> Sequence[GatewayInfo]:
        return self._read()


def make_handler(directory: GatewayDirectory, fallbacks: Sequence[dict[str, str]] = (),
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`fallbacks`: other regions' gateways (`peerlist.Peer.gateway`), listed after ours."""

    async def dispatch(request: web.Request) -> web.Response:
        uid = request.query.get("uid", "")
        if uid and not valid_id(uid):
            return web.json_response({"error": "invalid uid"}, status=400)
        # No uid (a client before its first login): spread at random instead.
        ranked = rank(await directory.gateways(), uid or secrets.token_hex(4))
        if not ranked and not fallbacks:
            return web.json_response({"error": "no gateway available", "endpoints": []},
                                     status=503)
        return web.json_response({
            "endpoints": [
                {"gateway_id": g.gateway_id, "ws": g.ws_url, "tcp": g.tcp_address}
                for g in ranked
            ] + [dict(f) for f in fallbacks]
        })

    return dispatch


def fallbacks_of(peers_json: str, own_region: str) -> list[dict[str, str]]:
    """The peer regions' public gateways, in the peer list's order (validated at
    start by `settings.load`)."""
    return [g for g in (p.gateway for p in peerlist.parse(peers_json, own_region))
            if g is not None]
