"""The state tier in process (`chatplane up`): device routes, and downlink
routing to the one gateway of the process.

The same job as a cluster's state tier (state/server.py), through the same
narrow interfaces gRPC carries there: the gateway registers its devices
(`register`, `unregister`: the gateway's `Registry`, as `State.Register`
and `Unregister`), whose routes are kept in a `Routes` store (routes/memory.py
here, Redis there) that applies the newer-connection-wins rule and names the
connection to kick, which goes back through the `Downlink` (`kick_route`, as
`Gateway.Kick`). The gateway holds the devices and their sockets.

In `up` every route names the one gateway in process, so routing is handing
over: `deliver` passes sequenced inbox entries to the gateway's
`push_entries` (whose device index skips users with no device there; a
route lookup per message would only repeat it), and `deliver_group` queues
a large group's message for the paced fan-out (state/groups.py) whose
flushes go to the gateway's `push_group`. A cluster's state tier reads the
routes to pick the gateways (state/server.py, state/relay.py); im hands it
the same two calls (state/client.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Protocol

from chatplane.registry.mirror import RoutedLink, RouteMirror
from chatplane.routes import base as routing
from chatplane.routes.base import RouteEntry, Routes
from chatplane.slicing import TimeSlice
from chatplane.state.groups import GroupFanout
from chatplane.storage.base import InboxItem, StoredMessage


class Downlink(Protocol):
    """A gateway as the state tier calls it (in process; over gRPC the
    `Gateway` service carries the same three calls)."""

    def push_entries(self, items: Sequence[InboxItem]) -> int:
        """Push each entry to every device of its user connected there;
        returns how many device pushes were queued."""

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        """Write one large-group frame to the devices of `user_ids` there."""

    def kick_route(self, user_id: str, device_id: str, conn_id: str, reason: str) -> bool:
        """Close that connection of the device, if it is still the device's there."""


class StateService:
    def __init__(self, routes: Routes, gateway_id: str, *, group_interval_ms: float = 100,
                 group_max_messages: int = 200) -> None:
        self.routes = routes
        self.gateway_id = gateway_id  # the gateway in process, which every route names
        # the gateway in process, once it exists (it is made after im, which
        # is given this service): until then there is no device to push to
        self.downlink: Downlink | None = None
        # with a Redis URL, the routes are also written there (registry/mirror.py)
        self.mirror: RouteMirror | None = None
        self.groups = GroupFanout(self, interval_ms=group_interval_ms,
                                  max_messages=group_max_messages)
        self._gone: list[RouteEntry] = []
        self._unregistering: asyncio.Task[None] | None = None

    def _route(self, link: RoutedLink) -> RouteEntry:
        # one process: its monotonic clock orders the connections
        return RouteEntry(link.user_id, link.device_id, self.gateway_id, link.conn_id,
                          int(link.opened_ms))

    async def register(self, link: RoutedLink) -> None:
        """A device logging in: its route, unless a newer connection of the
        device holds it; the connection that loses is kicked."""
        route = self._route(link)
        await self._unregister()  # the connections gone before it first, in order
        kicked = (await self.routes.register([route]))[0]
        if kicked is not None and self.downlink is not None:
            reason = routing.REFUSED if kicked == route else routing.REPLACED
            self.downlink.kick_route(kicked.user_id, kicked.device_id, kicked.conn_id, reason)
        if kicked != route and self.mirror is not None:
            self.mirror.added(link)

    def unregister(self, link: RoutedLink) -> None:
        """A connection gone: its route goes (if it still names it) at the
        next loop turn, with the others gone meanwhile; never blocks."""
        self._gone.append(self._route(link))
        if self.mirror is not None:
            self.mirror.removed(link)
        if self._unregistering is None or self._unregistering.done():
            self._unregistering = asyncio.get_running_loop().create_task(self._unregister())

    async def _unregister(self) -> None:
        while self._gone:
            gone, self._gone = self._gone, []
            await self.routes.unregister(gone)

    def deliver(self, items: Iterable[InboxItem]) -> int:
        """Route entries to every connected device of their users; returns
        how many device pushes were queued. Offline devices catch up by sync."""
        if self.downlink is None:
            return 0
        return self.downlink.push_entries(list(items))

    def deliver_group(self, conversation_id: str, members: Sequence[str],
                      message: StoredMessage) -> None:
        """A large group's message (read diffusion: no inbox entries): pushed
        to the online members, paced and batched per group."""
        self.groups.offer(conversation_id, members, message)

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        """The sink of the group fan-out: the gateway in process."""
        if self.downlink is None:
            return 0
        return await self.downlink.push_group(conversation_id, head_seq, payload, user_ids, clock)
