"""Connection registry and downlink routing (the state tier, in process).

Gateways register each logged-in device as a `DeviceLink`; the im tier hands
sequenced inbox entries to `deliver`, which routes each to every connected
device of its user. A second login of the same device replaces the first,
which is kicked (the newest connection wins: the old one is usually a dead
socket the client already gave up on).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from chatplane.gateway.bulk import BulkWriter, Handoff
from chatplane.state.groups import GroupFanout
from chatplane.storage.base import InboxItem, StoredMessage


class DeviceLink(Protocol):
    """A logged-in device's connection, as the state tier sees it."""

    user_id: str
    device_id: str

    @property
    def opened_ms(self) -> float:
        """When the connection was opened: of two, the newer one wins."""

    def push(self, items: Sequence[InboxItem]) -> None:
        """Queue entries for this device (in inbox_seq order); never blocks."""

    def kick(self, reason: str) -> None:
        """Close this connection: another one took the device over."""

    def push_raw(self, payload: bytes, handoff: Handoff | None = None) -> None:
        """Queue an already encoded frame (large-group pushes), or lend the
        socket to the group writer through `handoff` (gateway/bulk.py)."""


class StateService:
    def __init__(self, *, group_interval_ms: float = 100, group_max_messages: int = 200,
                 group_max_share: float = 1.0, group_writer: BulkWriter | None = None) -> None:
        self._links: dict[str, dict[str, DeviceLink]] = defaultdict(dict)
        self.groups = GroupFanout(self._links_of, interval_ms=group_interval_ms,
                                  max_messages=group_max_messages, max_share=group_max_share,
                                  writer=group_writer)

    def _links_of(self, user_id: str) -> Iterable[DeviceLink]:
        devices = self._links.get(user_id)
        return tuple(devices.values()) if devices else ()

    def deliver_group(self, conversation_id: str, members: Sequence[str],
                      message: StoredMessage) -> None:
        """A large group's message (read diffusion: no inbox entries): pushed
        to the online members, paced and batched per group."""
        self.groups.offer(conversation_id, members, message)

    async def register(self, link: DeviceLink) -> None:
        devices = self._links[link.user_id]
        previous = devices.get(link.device_id)
        if previous is not None and previous is not link and previous.opened_ms > link.opened_ms:
            # a login that was slow to finish on an older connection must not
            # replace the device's newer one: the older connection goes
            link.kick("the device logged in on a newer connection")
            return
        devices[link.device_id] = link
        if previous is not None and previous is not link:
            previous.kick("the device logged in on another connection")

    def holds(self, link: DeviceLink) -> bool:
        """Whether `link` is its device's current connection here."""
        return self._links.get(link.user_id, {}).get(link.device_id) is link

    def unregister(self, link: DeviceLink) -> None:
        devices = self._links.get(link.user_id)
        if devices is None:
            return
        if devices.get(link.device_id) is link:
            del devices[link.device_id]
        if not devices:
            del self._links[link.user_id]

    @property
    def connections(self) -> int:
        return sum(len(d) for d in self._links.values())

    def deliver(self, items: Iterable[InboxItem]) -> int:
        """Route entries to every connected device of their users; returns
        how many device pushes were queued. Offline devices catch up by sync."""
        pushed = 0
        for item in items:
            for link in tuple(self._links.get(item.user_id, {}).values()):
                link.push((item,))
                pushed += 1
        return pushed
