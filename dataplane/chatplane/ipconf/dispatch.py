"""`GET /v1/dispatch?uid=`: a ranked list of gateway endpoints for a client.

Clients always start here, so the fleet can grow, shrink and drain without
clients knowing addresses. A `GatewayDirectory` says which gateways exist and
how loaded they are; `rank` orders them (pure, so it is tested alone). Other
regions' public gateways (the peer list's `ws`/`tcp`) follow this region's own,
as fallbacks: a client whose gateways here all fail tries them next, and one
whose region is lost keeps them from its last answer (docs/architecture.md
"Failover"). The fallbacks are ordered by what probes say (`by_health`): the regions
reached first, the nearest (round trip) first; one not reached comes last, still listed,
since a client may reach it when this region does not. `chatplane up` reads its region
link's Hellos; the `chatplane ipconf` tier probes the peers' public gateways
(ipconf/probes.py).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
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


Fallbacks = Callable[[], Sequence[dict[str, str]]]
RTT_STEP_S = 0.010  # round trips within one step are "as near": the list's order decides


@dataclass(frozen=True, slots=True)
class PeerHealth:
    """How this region's probes see a peer region (regions/links.py)."""

    ok: bool  # its last Hello answered, as the expected region with the same key
    rtt_s: float | None = None  # that Hello's round trip


def by_health(fallbacks: Sequence[dict[str, str]],
              health: Mapping[str, PeerHealth]) -> list[dict[str, str]]:
    """The peer regions' gateways, those this region reaches first (nearest first, in
    RTT_STEP_S steps, then the peer list's order), then those not probed yet, then
    those it cannot reach. Pure."""
    def key(item: tuple[int, dict[str, str]]) -> tuple[int, int, int]:
        index, gateway = item
        seen = health.get(gateway.get("region", ""))
        if seen is None:
            return (1, 0, index)
        if not seen.ok:
            return (2, 0, index)
        return (0, int((seen.rtt_s or 0.0) / RTT_STEP_S), index)

    return [gateway for _, gateway in sorted(enumerate(fallbacks), key=key)]


def make_handler(directory: GatewayDirectory, fallbacks: Fallbacks = tuple,
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`fallbacks()`: other regions' gateways (`peerlist.Peer.gateway`), listed after
    ours, in the order they are returned, read at each request."""

    async def dispatch(request: web.Request) -> web.Response:
        uid = request.query.get("uid", "")
        if uid and not valid_id(uid):
            return web.json_response({"error": "invalid uid"}, status=400)
        # No uid (a client before its first login): spread at random instead.
        ranked = rank(await directory.gateways(), uid or secrets.token_hex(4))
        others = fallbacks()
        if not ranked and not others:
            return web.json_response({"error": "no gateway available", "endpoints": []},
                                     status=503)
        return web.json_response({
            "endpoints": [
                {"gateway_id": g.gateway_id, "ws": g.ws_url, "tcp": g.tcp_address}
                for g in ranked
            ] + [dict(f) for f in others]
        })

    return dispatch


def fallbacks_of(peers_json: str, own_region: str) -> list[dict[str, str]]:
    """The peer regions' public gateways, in the peer list's order (validated at
    start by `settings.load`)."""
    return [g for g in (p.gateway for p in peerlist.parse(peers_json, own_region))
            if g is not None]
