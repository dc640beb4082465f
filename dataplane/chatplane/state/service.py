"""The state tier in process (`chatplane up`): downlink routing to the one
gateway of the process.

The gateway alone holds the devices, their sockets and the newer-connection-
wins rule for its device index (gateway/service.py); state only routes. In
`up` every device is on the one gateway in process, so routing is handing
over: `deliver` passes sequenced inbox entries to the gateway's
`push_entries`, and `deliver_group` queues a large group's message for the
paced fan-out (state/groups.py) whose flushes go to the gateway's
`push_group`. A cluster's state tier does the same over gRPC, with the
routes in Redis (state/server.py, state/relay.py): im hands it the same two
calls (state/client.py), and the gateways' `Push` and `GroupPush` reach the
same two gateway methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from chatplane.slicing import TimeSlice
from chatplane.state.groups import GroupFanout
from chatplane.storage.base import InboxItem, StoredMessage


class Downlink(Protocol):
    """A gateway as the state tier pushes to it (in process; over gRPC the
    `Gateway` service carries the same two calls)."""

    def push_entries(self, items: Sequence[InboxItem]) -> int:
        """Push each entry to every device of its user connected there;
        returns how many device pushes were queued."""

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        """Write one large-group frame to the devices of `user_ids` there."""


class StateService:
    def __init__(self, *, group_interval_ms: float = 100, group_max_messages: int = 200) -> None:
        # the gateway in process, once it exists (it is made after im, which
        # is given this service): until then there is no device to push to
        self.downlink: Downlink | None = None
        self.groups = GroupFanout(self, interval_ms=group_interval_ms,
                                  max_messages=group_max_messages)

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
