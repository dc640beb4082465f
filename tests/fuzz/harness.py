"""A real `chatplane up` node in process, driven frame by frame.

`FuzzNode` builds the node exactly as `chatplane up` does (`chatplane.node.Node`:
gateway, state, im and SQLite storage in a temp dir) and opens client
connections on its gateway without a socket: each `Peer` is a real
`gateway.connection.Connection` whose transport hands the frames it writes
back to the test, and whose payloads go in through `on_payload`, like the
WebSocket and TCP transports do. Everything past the transport is the
product's own code; only the bytes skip the kernel.

A `Peer` behaves like a minimal SDK: it numbers its requests, waits for each
reply by id, acks pushes in inbox order (dropping what it already holds, and
syncing when it sees a gap), and for the ordinary users feeds a
`DeliveryChecker` with acks and receipts of the conversations it watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chatplane import settings as settings_mod
from chatplane.checker import DeliveryChecker
from chatplane.gateway.bulk import Lent
from chatplane.gateway.connection import Connection
from chatplane.node import Node
from chatplane.protocol.errors import ErrorCode
from chatplane.v1 import frames_pb2 as pb

REPLY_TIMEOUT_S = 10.0

# The reply each request kind gets when it succeeds (push_ack gets none).
REPLIES = {
    "send": "send_ack", "sync": "sync_response", "history": "history_response",
    "heartbeat": "heartbeat_ack", "open_direct": "open_direct_ack", "friend_op": "friend_op_ack",
    "friends": "friends_response", "group_create": "group_op_ack", "group_op": "group_op_ack",
    "members": "members_response", "conversations": "conversations_response",
    "mark_read": "mark_read_ack", "receipts": "receipts_response", "login": "login_ack",
}

# The error codes a well-formed request may get (docs/protocol.md): anything
# else, INTERNAL above all, is a bug the fuzzer found.
DOCUMENTED = frozenset({
    ErrorCode.INVALID_ARGUMENT, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.BLOCKED,
    ErrorCode.UNKNOWN_FRAME, ErrorCode.ALREADY_LOGGED_IN, ErrorCode.FRAME_TOO_LARGE,
})


class ErrorLog(logging.Handler):
    """Every ERROR record of the node (a request that failed with INTERNAL,
    a task that died) and every exception the event loop saw."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()} {record.exc_text or ''}")

    def first(self) -> str:
        return f"{len(self.records)} errors logged, the first: {self.records[0][-3000:]}"

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        self.records.append(f"event loop: {context.get('message')} {context.get('exception')!r}")


class Wire:
    """The transport of a Peer: what the connection writes goes to the peer."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def write(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.peer.on_frame(pb.Frame.FromString(payload))

    def close(self) -> None:
        # as a real transport does once the socket is gone (after this write)
        asyncio.get_running_loop().call_soon(self.peer.closed_by_server)

    def lend(self, payload: bytes) -> Lent | None:
        return None  # never lent to the group writer: written through `write`


@dataclass
class Peer:
    node: Node
    user: str
    device: str
    checker: DeliveryChecker | None = None  # ordinary users: receipts of `watched` are judged
    watched: set[str] = field(default_factory=set)
    closed: bool = False
    have: int = 0  # inbox entries held, contiguous
    gap: bool = False
    last_error: pb.Frame | None = None

    def __post_init__(self) -> None:
        self.conn = Connection(self.node.gateway, Wire(self), peer=f"fuzz:{self.user}")
        self.node.gateway.opened(self.conn)
        self._next_id = 0
        self._cid = 0
        self._waiting: dict[int, asyncio.Future[pb.Frame]] = {}
        self._syncing: asyncio.Task[None] | None = None

    # -- from the server -------------------------------------------------------

    def on_frame(self, frame: pb.Frame) -> None:
        kind = frame.WhichOneof("body")
        if kind == "push":
            self._take_push(frame.push.entries)
            return
        if kind == "sync_hint":
            self.gap = True
            self._sync_soon()
            return
        if kind in ("group_push", "reconnect"):
            return
        if kind == "error":
            self.last_error = frame
        waiter = self._waiting.pop(frame.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)

    def _take_push(self, entries: Iterable[pb.InboxEntry]) -> None:
        for entry in entries:
            if entry.inbox_seq <= self.have:
                continue  # a retransmission of what is held
            if entry.inbox_seq != self.have + 1:
                self.gap = True  # filled by a sync, as the SDK does
                self._sync_soon()
                break
            self._hold(entry)
        ack = pb.Frame(push_ack=pb.PushAck(inbox_seq=self.have))
        asyncio.get_running_loop().call_soon(self.feed, ack.SerializeToString())

    def _sync_soon(self) -> None:
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.get_running_loop().create_task(self._sync_quietly())

    async def _sync_quietly(self) -> None:
        """A sync in the background (a gap, a hint); the request judging is
        the test's business, so a connection closed meanwhile ends it quietly."""
        try:
            await self.catch_up()
        except (AssertionError, TimeoutError):
            if not self.closed:
                raise
        ack = pb.Frame(push_ack=pb.PushAck(inbox_seq=self.have))
        self.feed(ack.SerializeToString())

    def _hold(self, entry: pb.InboxEntry) -> None:
        self.have = entry.inbox_seq
        m = entry.message
        if self.checker is not None and m.conversation_id in self.watched:
            self.checker.record_receipt(self.user, self.device, m.conversation_id, m.seq,
                                        m.message_id)

    def closed_by_server(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.conn.on_closed()
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(self.last_error or pb.Frame(error=pb.Error(code=0)))
        self._waiting.clear()

    # -- to the server ---------------------------------------------------------

    def feed(self, payload: bytes) -> None:
        if not self.closed:
            self.conn.on_payload(payload)

    def start(self, frame: pb.Frame) -> asyncio.Future[pb.Frame]:
        """Send a request (its id set here); the future resolves with its reply."""
        self._next_id += 1
        frame.id = self._next_id
        waiter: asyncio.Future[pb.Frame] = asyncio.get_running_loop().create_future()
        if self.closed:
            waiter.set_result(self.last_error or pb.Frame(error=pb.Error(code=0)))
            return waiter
        self._waiting[frame.id] = waiter
        if frame.WhichOneof("body") == "push_ack":
            # never answered (unless refused, at once): a request served
            # after it stands in, one that is held behind a login like it
            self.feed(frame.SerializeToString())
            frame = pb.Frame(id=frame.id, friends=pb.FriendsRequest())
        self.feed(frame.SerializeToString())
        return waiter

    async def request(self, frame: pb.Frame) -> pb.Frame:
        return await asyncio.wait_for(self.start(frame), REPLY_TIMEOUT_S)

    async def login(self, token: str) -> pb.Frame:
        reply = await self.request(pb.Frame(login=pb.Login(protocol_version=1, token=token)))
        assert reply.WhichOneof("body") == "login_ack", reply
        return reply

    async def send_ordinary(self, conversation_id: str, text: str) -> pb.SendAck:
        """A plain send that must be acked; the ack goes to the checker."""
        self._cid += 1
        send = pb.Send(conversation_id=conversation_id, cid=self._cid, text=text)
        reply = await self.request(pb.Frame(send=send))
        # over the user's send rate (abuse limits): resent with the same cid, as the SDK does
        while reply.WhichOneof("body") == "error" and reply.error.code == ErrorCode.RATE_LIMITED:
            await asyncio.sleep(0.05)
            reply = await self.request(pb.Frame(send=send))
        assert reply.WhichOneof("body") == "send_ack", f"{self.user}'s send: {reply}"
        ack = reply.send_ack
        if self.checker is not None:
            self.checker.record_ack(self.user, self.device, conversation_id, ack.seq,
                                    ack.message_id)
        return ack

    async def catch_up(self) -> None:
        """Sync until the inbox head, as the SDK does after a gap or a hint."""
        while True:
            reply = await self.request(pb.Frame(sync=pb.SyncRequest(after_inbox_seq=self.have)))
            assert reply.WhichOneof("body") == "sync_response", reply
            for entry in reply.sync_response.entries:
                if entry.inbox_seq == self.have + 1:
                    self._hold(entry)
            if not reply.sync_response.has_more:
                self.gap = False
                return


async def start_node(data_dir: Path, **sections: dict[str, object]) -> Node:
    """`chatplane up`'s node on `data_dir`, no port but an ephemeral HTTP one."""
    overrides: dict[str, dict[str, object]] = {
        "server": {"http_port": 0, "server_id": "fuzz"},
        "storage": {"data_dir": str(data_dir)},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    node = Node(settings_mod.load(overrides, environ={}))
    await node.start()
    return node
