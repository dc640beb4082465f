"""A real `Gateway` as the sink of a real `GroupFanout` (the wiring of
`chatplane up`), with group members that are not sockets: each test gives
the objects that stand for the devices in the gateway's device index."""

from __future__ import annotations

from typing import Any, cast

from chatplane.auth import TokenSigner
from chatplane.gateway.bulk import BulkWriter
from chatplane.gateway.service import Gateway
from chatplane.routes.memory import MemoryRoutes
from chatplane.settings import Settings
from chatplane.state.service import StateService


class NoIm:
    """The gateway's im, never called by a group fan-out."""

    store_id = ""

    async def inbox_head(self, user_id: str) -> int:
        raise AssertionError("not used by a fan-out")


class NoRoutes:
    async def register(self, link: object) -> None: ...

    def unregister(self, link: object) -> None: ...


def fanout_to(devices: dict[str, Any], *, writer: BulkWriter | None = None,
              **groups: float) -> StateService:
    """The in-process state tier pushing through a gateway whose index holds
    `devices` (user -> an object with the Connection's `push_group`)."""
    gateway = Gateway(Settings(), cast(Any, NoIm()), cast(Any, NoRoutes()),
                      TokenSigner("a test key of 16 bytes or more"), "test")
    gateway.group_writer = writer
    for user, device in devices.items():
        gateway.users[user] = {"d": device}
    state = StateService(MemoryRoutes(), "test", group_interval_ms=groups.get("interval_ms", 100))
    state.groups.slice_ms = groups.get("slice_ms", state.groups.slice_ms)
    state.downlink = gateway
    return state
