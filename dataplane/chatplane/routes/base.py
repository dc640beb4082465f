"""The `Routes` interface, and the rule every route store keeps.

A route names the gateway connection that holds a device: user -> device ->
(gateway, connection, opened_ms). A user is present while one of their
devices has a route. Gateways register a device before answering its login,
re-assert their routes every ROUTE_REFRESH_S (and at once after the store
lost them), and unregister a connection when it goes; the routes of a user
expire ROUTE_TTL_S after their last write, so a killed gateway's go by
themselves.

The rule, stated once (`takes_route`): of two connections of one device, the
one opened later keeps the route, whichever registration arrives last (a
login that was slow on a connection the client already gave up on must not
take the device from its new connection). A connection opened in the same
millisecond as the holder takes it when it logs in, but not by a refresh (a
re-assertion never steals from an equal). Unregister deletes a route only
while it still names the same connection. memory.py applies this function;
the Lua script of redis.py is its twin, and the gateway's own device index
(gateway/service.py) applies it to the connections it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

ROUTE_TTL_S = 60.0
ROUTE_REFRESH_S = 20.0

# why a connection is kicked (the device's client sees it in SESSION_REPLACED)
REPLACED = "the device logged in on another connection"
REFUSED = "the device logged in on a newer connection"


@dataclass(frozen=True, slots=True)
class RouteEntry:
    user_id: str
    device_id: str
    gateway_id: str
    conn_id: str
    opened_ms: int = 0  # wall clock at the gateway; 0 (unknown) counts as oldest

    def same_connection(self, other: RouteEntry) -> bool:
        return self.gateway_id == other.gateway_id and self.conn_id == other.conn_id


def takes_route(held_ms: float, incoming_ms: float, *, login: bool) -> bool:
    """Whether a connection opened at `incoming_ms` takes a device's route
    from another connection, opened at `held_ms`, that holds it: when it is
    newer, or as new and logging in (a refresh keeps the holder)."""
    return incoming_ms >= held_ms if login else incoming_ms > held_ms


def decide(held: RouteEntry | None, incoming: RouteEntry, *, login: bool) -> bool:
    """Whether `incoming` is written over `held` (the device's current route)."""
    return held is None or held.same_connection(incoming) or takes_route(
        held.opened_ms, incoming.opened_ms, login=login)


def to_kick(held: RouteEntry | None, incoming: RouteEntry, written: bool) -> RouteEntry | None:
    """After a login's registration, the connection its caller kicks: the
    one it replaced, or itself when it was refused (None: nothing to kick)."""
    if not written:
        return incoming
    return None if held is None or held.same_connection(incoming) else held


class Routes(Protocol):
    """Where the state tier keeps device routes (memory.py in `chatplane up`,
    redis.py in a cluster). Every call is idempotent."""

    async def register(self, routes: Sequence[RouteEntry]) -> list[RouteEntry | None]:
        """Logins: write each route unless a newer connection of its device
        holds it; per route, the connection to kick (`to_kick`)."""

    async def refresh(self, routes: Sequence[RouteEntry]) -> None:
        """Re-assert live routes (periodically, or after the store lost them)
        without taking a device from a newer or as new connection."""

    async def unregister(self, routes: Iterable[RouteEntry]) -> None:
        """Delete each route that still names its connection."""

    async def lookup(self, user_ids: Sequence[str]) -> dict[str, list[RouteEntry]]:
        """Every device route of each user (users without one are absent):
        routing, and presence (a user's devices online)."""

    async def users_by_gateway(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """Which of these users have a device on which gateway (offline users
        are absent): large-group fan-out reads thousands at once."""
