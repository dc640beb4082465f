"""Large-group fan-out (read diffusion): the one pacing path of `up` and of a
cluster's state tier.

One `GroupBatcher` paces each group (delivery/fanout.py); each flush is encoded
once and handed to the `GroupSink` with the member list: in `up` the gateway
in process (gateway/service.py `push_group`: it alone holds the devices and
their sockets, and writes through its group writer thread), in a cluster the
relay to the gateways (state/relay.py), whose `GroupPush` reaches the same
`push_group`. At most one fan-out runs per group at a time, and it holds the
event loop for at most `slice_ms` at a stretch (the sink looks at the flush's
`TimeSlice` every few members), so a 1:1 message waits for at most one slice
per hop, however large the group.
Messages that come while a flush is being pushed wait for one batch after
it, and after a fan-out whose slices took C of CPU in all (not the time
others ran between them; the writer thread's CPU counts) the group's next flush waits at least
C / `max_share`: a busy group batches more (bigger, compressed frames)
rather than taking more of the process. With `max_share` 1 (the default)
the group uses what the rest of the process leaves, since everything else
runs first between two slices; lower values leave CPU idle for others at the
price of the group's latency.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.metrics_core import Metric

from chatplane.delivery.fanout import Flush, GroupBatcher
from chatplane.metrics import Histogram
from chatplane.protocol import wire
from chatplane.settings import Supervision
from chatplane.slicing import DEFAULT_SLICE_MS, TimeSlice
from chatplane.storage.base import StoredMessage
from chatplane.supervision import Supervisor

log = logging.getLogger("chatplane.state.groups")


class GroupSink(Protocol):
    """Where a paced flush goes: the devices of the listed users, wherever
    they are connected."""

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        """Write the frame to every device of `user_ids` (the group's head is
        `head_seq`), pausing when `clock`'s slice is used up and waiting
        through `clock.wait`; returns how many device pushes were made."""


@dataclass
class _Group:
    batcher: GroupBatcher[StoredMessage]
    members: Sequence[str] = ()
    flushes: deque[Flush[StoredMessage]] = field(default_factory=deque)
    worker: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None


class GroupFanout:
    def __init__(self, sink: GroupSink | None, *, interval_ms: float = 100,
                 max_messages: int = 200, slice_ms: float = DEFAULT_SLICE_MS,
                 max_share: float = 1.0) -> None:
        self.sink = sink  # None: set before the first offer (the sink may be made later)
        self.interval_ms = interval_ms
        self.max_messages = max_messages
        self.slice_ms = slice_ms
        self.max_share = max_share
        self._groups: dict[str, _Group] = {}
        # runs each group's worker; its process's own once the app sets it
        # (a worker that raises is logged, counted and resumes its group's flushes)
        self.supervisor = Supervisor(Supervision())
        self.frames_pushed = 0
        # from a flush's start until its frame is queued for the last member
        self.fanout = Histogram("chatplane_group_fanout_seconds",
                                "large-group flush: time to queue the frame for every member")
        self.held = Histogram("chatplane_group_fanout_held_seconds",
                              "large-group flush: time its slices held the event loop")
        self.cpu = Histogram("chatplane_group_fanout_cpu_seconds",
                             "large-group flush: CPU time of its slices (paces the group)")

    def families(self) -> Iterator[Metric]:
        yield self.fanout.family()
        yield self.held.family()
        yield self.cpu.family()

    def offer(self, conversation_id: str, members: Sequence[str], message: StoredMessage) -> None:
        group = self._groups.get(conversation_id)
        if group is None:
            group = self._groups[conversation_id] = _Group(
                GroupBatcher(interval_ms=self.interval_ms, max_messages=self.max_messages))
        group.members = members
        loop = asyncio.get_running_loop()
        flush = group.batcher.offer(message.seq, message, loop.time() * 1000,
                                    busy=self._busy(group))
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

    @staticmethod
    def _busy(group: _Group) -> bool:
        return group.worker is not None and not group.worker.done()

    def _tick(self, conversation_id: str) -> None:
        group = self._groups.get(conversation_id)
        if group is None:
            return
        group.timer = None
        if self._busy(group):
            return  # its fan-out, when done, takes what is due
        flush = group.batcher.due(asyncio.get_running_loop().time() * 1000)
        if flush is not None:
            self._enqueue(conversation_id, group, flush)
        self._arm(conversation_id, group)
        self._forget_if_idle(conversation_id, group)

    def _forget_if_idle(self, conversation_id: str, group: _Group) -> None:
        """Drop an idle group's state, but only once its interval since the
        last flush has passed: dropped sooner, its next message would go out
        at once and the cap on its share would not hold."""
        if group.timer is not None or group.flushes or group.batcher.deadline() is not None:
            return
        if self._busy(group):
            return
        loop = asyncio.get_running_loop()
        batcher = group.batcher
        if loop.time() * 1000 - batcher.last_flush_ms >= batcher.interval_ms:
            self._groups.pop(conversation_id, None)
        else:
            group.timer = loop.call_at((batcher.last_flush_ms + batcher.interval_ms) / 1000,
                                       self._tick, conversation_id)

    def _enqueue(self, conversation_id: str, group: _Group, flush: Flush[StoredMessage]) -> None:
        group.flushes.append(flush)
        if group.worker is None or group.worker.done():
            group.worker = self.supervisor.spawn(
                "group-fanout", functools.partial(self._work, conversation_id, group))

    async def _work(self, conversation_id: str, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        while group.flushes:
            flush = group.flushes.popleft()
            started = loop.time()
            payload = wire.group_push_frame(conversation_id, flush.messages, flush.head_seq)
            clock = TimeSlice(self.slice_ms)
            try:
                assert self.sink is not None, "a GroupFanout offered messages before its sink"
                self.frames_pushed += await self.sink.push_group(
                    conversation_id, flush.head_seq, payload, group.members, clock)
            except Exception:  # the group's next flushes must still go out
                log.exception("group %s: fan-out failed", conversation_id)
            self.fanout.observe(loop.time() - started)
            self.held.observe(clock.held())
            # the share is of the CPU: time the machine took the process off
            # it mid-slice was nobody's in this process; the writer thread's counts
            cost_s = clock.cpu()
            self.cpu.observe(cost_s)
            group.batcher.interval_ms = max(self.interval_ms, cost_s * 1000 / self.max_share)
        group.worker = None
        self._arm(conversation_id, group)  # what came meanwhile: one batch, when due
        self._forget_if_idle(conversation_id, group)
