"""One connection's sends on their way to im, in the device's cid order.

A device pipelines sends with increasing cids (up to its window), and the
seqs they get must follow the cids (DESIGN §3). Calls made side by side
overtake each other, over gRPC and inside im, so the sends of one connection
into one conversation go through a lane: one call to im at a time carrying
every send queued meanwhile, in arrival order (`ImApi.handle_sends`; im
sequences a batch in its order: a send starts once the one before it is stored, or
queued where storage keeps queue order, storage/pipelining.py).
Lanes of different conversations run side by side: order is only owed
within a conversation.

A send answered with a retriable error (im unavailable, its storage down, a
lease that moved) blocks the cids above it (gateway/pacing.py, `SendGate`):
the sends queued behind it are refused unsent, as im refuses the rest of
its batch, so the device's resend from the failed cid cannot land behind
them. On a new connection (this gateway or another) the device resends from
its lowest unacked cid, in order; what an earlier attempt already stored is
answered with its original ack (storage is idempotent on sender, device and
cid), so a resend never gets a second seq.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

from chatplane import tracing
from chatplane.protocol.bounds import MAX_SENDS_PER_CALL
from chatplane.protocol.errors import ErrorCode
from chatplane.protocol.session import Request
from chatplane.v1 import frames_pb2 as pb

if TYPE_CHECKING:
    from chatplane.gateway.connection import Connection

# bytes of send bodies per call to im (gRPC's default message limit is 4 MiB)
MAX_BATCH_BYTES = 1024 * 1024


def _now_ms() -> float:
    return time.monotonic() * 1000.0  # the clock of gateway/connection.py's now_ms


class Uplink:
    """The lanes of one connection, by conversation."""

    __slots__ = ("conn", "lanes")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lanes: dict[str, collections.deque[Request]] = {}

    def submit(self, request: Request) -> None:
        """Queue an admitted send behind the connection's earlier sends into
        the same conversation."""
        conversation_id = request.frame.send.conversation_id
        lane = self.lanes.get(conversation_id)
        if lane is not None:
            lane.append(request)  # the lane's task takes it with the next batch
            return
        lane = self.lanes[conversation_id] = collections.deque((request,))
        self.conn.spawn(self._run(conversation_id, lane))

    async def _run(self, conversation_id: str, lane: collections.deque[Request]) -> None:
        conn = self.conn
        try:
            while lane:
                batch = self._take(lane)
                if not batch:
                    continue
                started = _now_ms()
                frames = [r.frame for r in batch]
                try:
                    with tracing.span("gateway.sends", count=len(frames)):
                        replies = await conn.gateway.im.handle_sends(conn.user_id,
                                                                     conn.device_id, frames)
                except Exception as exc:  # a bug must cost these sends, not the connection
                    conn.gateway.log.exception("sends failed")
                    for request in batch:
                        conn.session.error(request.id, ErrorCode.INTERNAL,
                                           f"internal error: {type(exc).__name__}")
                        conn.sends.done()
                    conn.flush()
                    continue
                self._answer(batch, replies, started)
        finally:
            if self.lanes.get(conversation_id) is lane:
                del self.lanes[conversation_id]

    def _take(self, lane: collections.deque[Request]) -> list[Request]:
        """The next batch: queued sends in order, up to the call's bounds;
        those above a cid refused meanwhile are answered here instead."""
        conn = self.conn
        now = _now_ms()
        batch: list[Request] = []
        size = 0
        refused = False
        while lane and len(batch) < MAX_SENDS_PER_CALL and size < MAX_BATCH_BYTES:
            request = lane.popleft()
            send = request.frame.send
            refusal = conn.sends.after_refused(send.cid, now)
            if refusal is not None:
                conn.session.error(request.id, refusal.code, refusal.message)
                conn.sends.done()
                refused = True
                continue
            batch.append(request)
            size += send.ByteSize()
        if refused:
            conn.flush()
        return batch

    def _answer(self, batch: list[Request], replies: list[pb.Frame], started: float) -> None:
        conn = self.conn
        now = _now_ms()
        session, sends = conn.session, conn.sends
        observe, latency = conn.gateway.metrics.send_latency.observe, (now - started) * 0.001  # s
        for request, reply in zip(batch, replies, strict=True):
            if reply.HasField("error") and reply.error.retriable:
                conn.sends.block(request.frame.send.cid, now)
            session.send(reply)
            observe(latency)
            sends.done()
        conn.flush()
