"""Large-group fan-out (read diffusion) to the devices connected here.

One `GroupBatcher` paces each group (delivery/fanout.py); each flush is encoded
once and the same bytes go to every online member's devices. At most one
fan-out runs per group at a time, and it yields to the event loop every
`slice_size` members, so a 10,000-member group shares the process with every
other conversation instead of starving it. The cap on a group's share is
adaptive: after a fan-out that took T, the group's next flush waits at least
T / `max_share`, so a busy group batches more (bigger, compressed frames)
rather than taking more of the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatplane.delivery.fanout import Flush, GroupBatcher
from chatplane.metrics import Histogram
from chatplane.protocol import wire
from chatplane.storage.base import StoredMessage

log = logging.getLogger("chatplane.state.groups")


class RawLink(Protocol):
    def push_raw(self, payload: bytes) -> None:
        """Queue an already encoded frame for this device."""


@dataclass
class _Group:
    batcher: GroupBatcher[StoredMessage]
    members: Sequence[str] = ()
    flushes: deque[Flush[StoredMessage]] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


class GroupFanout:
    def __init__(self, links_of: Callable[[str], Iterable[RawLink]], *, interval_ms: float = 100,
                 max_messages: int = 200, slice_size: int = 250, max_share: float = 0.25) -> None:
        self.links_of = links_of
        self.interval_ms = interval_ms
        self.max_messages = max_messages
        self.slice_size = slice_size
        self.max_share = max_share
        self._groups: dict[str, _Group] = {}
        self.frames_pushed = 0
        # from a flush's start until its frame is queued for the last member
        self.fanout_ms = Histogram("chatplane_group_fanout_ms",
                                   "large-group flush: time to queue the frame for every member")

    def offer(self, conversation_id: str, members: Sequence[str], message: StoredMessage) -> None:
        group = self._groups.get(conversation_id)
        if group is None:
            group = self._groups[conversation_id] = _Group(
                GroupBatcher(interval_ms=self.interval_ms, max_messages=self.max_messages))
        group.members = members
        loop = asyncio.get_running_loop()
        flush = group.batcher.offer(message.seq, message, loop.time() * 1000)
        if flush is not None:
            self._enqueue(conversation_id, group, flush)
        else:
            self._arm(conversation_id, group)

    def _arm(self, conversation_id: str, group: _Group) -> None:
        deadline = group.batcher.deadline()
        if deadline is None or group.timer is not None:
            return
        loop = asyncio.get_running_loop()
        group.timer = loop.call_at(deadline / 1000, self._tick, conversation_id)

    def _tick(self, conversation_id: str) -> None:
        group = self._groups.get(conversation_id)
        if group is None:
            return
        group.timer = None
        flush = group.batcher.due(asyncio.get_running_loop().time() * 1000)
        if flush is not None:
            self._enqueue(conversation_id, group, flush)
        self._arm(conversation_id, group)

    def _enqueue(self, conversation_id: str, group: _Group, flush: Flush[StoredMessage]) -> None:
        group.flushes.append(flush)
        if group.worker is None or group.worker.done():
            group.worker = asyncio.get_running_loop().create_task(self._work(conversation_id, group))

    async def _work(self, conversation_id: str, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        while group.flushes:
            flush = group.flushes.popleft()
            started = loop.time()
            payload = wire.group_push_frame(conversation_id, flush.messages, flush.head_seq)
            try:
                await self._fan(conversation_id, flush.head_seq, payload, group.members)
            except Exception:  # the group's next flushes must still go out
                log.exception("group %s: fan-out failed", conversation_id)
            spent_ms = (loop.time() - started) * 1000
            self.fanout_ms.observe(spent_ms)
            group.batcher.interval_ms = max(self.interval_ms, spent_ms / self.max_share)
        if group.batcher.deadline() is None and group.timer is None:
            self._groups.pop(conversation_id, None)

    async def _fan(self, conversation_id: str, head_seq: int, payload: bytes,
                   members: Sequence[str]) -> None:
        """Write one flush's frame to every online member's devices here (the
        state tier of a cluster relays it to gateways instead: state/relay.py)."""
        for start in range(0, len(members), self.slice_size):
            for user in members[start:start + self.slice_size]:
                for link in self.links_of(user):
                    try:
                        link.push_raw(payload)
                        self.frames_pushed += 1
                    except Exception:  # one broken connection must not stop the group
                        log.exception("group push failed")
            await asyncio.sleep(0)
