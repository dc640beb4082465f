"""`chatplane up`'s state tier keeps its routes in a `MemoryRoutes` and
kicks through the gateway's `Downlink`, as a cluster's state does with
Redis and `Gateway.Kick`: the connection a login replaces, or the late
login of an older connection, is kicked; a connection that goes takes only
its own route with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chatplane.routes import base as routing
from chatplane.routes.base import RouteEntry
from chatplane.routes.memory import MemoryRoutes
from chatplane.slicing import TimeSlice
from chatplane.state.service import StateService
from chatplane.storage.base import InboxItem


@dataclass(frozen=True)
class Link:
    user_id: str
    device_id: str
    conn_id: str
    opened_ms: float


class KickLog:
    """The gateway as state calls it, recording the kicks."""

    def __init__(self) -> None:
        self.kicked: list[tuple[str, str]] = []

    def push_entries(self, items: Sequence[InboxItem]) -> int:
        return 0

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        return 0

    def kick_route(self, user_id: str, device_id: str, conn_id: str, reason: str) -> bool:
        self.kicked.append((conn_id, reason))
        return True


async def test_logins_keep_the_newest_connection_and_kick_the_other() -> None:
    routes = MemoryRoutes()
    state = StateService(routes, "node-1")
    gateway = KickLog()
    state.downlink = gateway
    older = Link("u", "phone", "c1", 1_000.4)
    newer = Link("u", "phone", "c2", 2_000.9)
    await state.register(older)
    await state.register(newer)
    assert gateway.kicked == [("c1", routing.REPLACED)]
    await state.register(Link("u", "phone", "c0", 500.0))  # a late login, opened before both
    assert gateway.kicked[-1] == ("c0", routing.REFUSED)
    state.unregister(older)  # gone: the device's route is the newer one's
    assert await routes.lookup(["u"]) == {"u": [RouteEntry("u", "phone", "node-1", "c2", 2_000)]}
    state.unregister(newer)
    await state.register(Link("v", "phone", "c3", 3_000.0))  # unregisters apply first
    assert await routes.lookup(["u", "v"]) == {
        "v": [RouteEntry("v", "phone", "node-1", "c3", 3_000)]}
