"""The lean W1 client: the raw TCP protocol with as little client work as it takes.

`chatplane bench direct` measures the server only if the load generator costs
much less per message than the server does. The SDK does not: each client keeps
a session, a send queue, a retry timer and a task per stream, and writes one
frame per `write`. A `LeanClient` is one asyncio Protocol on the raw TCP port
that speaks just what W1 needs (Login, OpenDirect, Send/SendAck, Push/PushAck,
HistoryRequest) and does per loop turn what the SDK does per frame:

- outgoing frames are buffered and written with one `transport.write` per
  loop turn (`call_soon` flush), the cumulative PushAck included;
- incoming bytes are cut into frames by a plain loop over a bytearray, and
  pushed messages are handed to `messages()` from a deque without a task hop;
- the client's two rules (docs/protocol.md): an entry at or below the inbox
  cursor is dropped, and so is one naming a (conversation, seq) already
  delivered (a second inbox entry of one message, counted in
  `duplicate_entries`: the report shows them);
- and the repair the SDK makes: an entry past a gap in the inbox (a push lost
  between the tiers) is not taken; the client pulls from its cursor with a
  `SyncRequest` instead (counted in `synced`), as it does on a `SyncHint` whose
  head is past its cursor. Without it a lost push would be acked over and
  counted lost by the checker though storage holds it.

It keeps the `ChatClient` shape that `DirectRun` drives (`direct.py`), so the
checker, the pacing and the report are the same for both clients. It does not
reconnect: chaos runs (`--cut-every`) use the SDK, whose resume is what they test.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

from chatplane.bench.direct import ChatClient, Connector, SetupError
from chatplane.protocol import frames
from chatplane.v1 import frames_pb2 as pb

_LENGTH = struct.Struct(">I")
_SYNC_ID = 2**63  # the frame id of this client's sync requests (its requests count from 1)


class LeanClosed(ConnectionError):
    """The connection is gone; this client does not reconnect."""


class LeanClient(asyncio.Protocol):
    """One device on one raw TCP connection (see the module docstring)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reconnects = 0  # never: the field is part of the ChatClient shape
        self.inbox_seq = 0
        self.duplicate_entries = 0  # inbox entries of a message already delivered
        self.synced = 0  # inbox entries taken from sync pages (a gap or a SyncHint)
        self._syncing = False
        self._last_seq: dict[str, int] = {}  # conversation -> last seq delivered
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._acked_inbox = 0
        self._next_id = 1
        self._cid = 0
        self._waiting: dict[int, asyncio.Future[pb.Frame]] = {}
        self._inbox: collections.deque[pb.Message] = collections.deque()
        self._wake: asyncio.Event = asyncio.Event()
        self._closed = False

    # -- the ChatClient shape ---------------------------------------------------
    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)
        login = pb.Login(
            protocol_version=frames.PROTOCOL_VERSION, token=self.token, client_name="bench-lean"
        )
        try:
            ack = await asyncio.wait_for(self._request(pb.Frame(login=login)), 15)
        except RuntimeError as exc:
            raise SetupError(f"login refused: {exc}") from exc
        self.inbox_seq = self._acked_inbox = ack.login_ack.inbox_head

    async def direct(self, user_id: str) -> str:
        reply = await self._request(pb.Frame(open_direct=pb.OpenDirect(peer_user_id=user_id)))
        return reply.open_direct_ack.conversation_id

    async def send_text(self, conversation_id: str, text: str) -> Any:
        self._cid += 1
        reply = await self._request(
            pb.Frame(send=pb.Send(conversation_id=conversation_id, cid=self._cid, text=text))
        )
        return reply.send_ack

    async def messages(self) -> AsyncIterator[Any]:
        inbox, wake = self._inbox, self._wake
        while True:
            while inbox:
                yield inbox.popleft()
            if self._closed:
                return
            wake.clear()
            await wake.wait()

    async def history(
        self, conversation_id: str, before_seq: int | None = None, limit: int = 50
    ) -> list[Any]:
        reply = await self._request(pb.Frame(history=pb.HistoryRequest(
            conversation_id=conversation_id, before_seq=before_seq or 0, limit=limit
        )))
        return list(reply.history_response.messages)

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def abort_connection(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- requests and the write buffer -----------------------------------------
    def _request(self, frame: pb.Frame) -> asyncio.Future[pb.Frame]:
        if self._transport is None:
            raise LeanClosed("not connected")
        frame.id = self._next_id
        self._next_id += 1
        future: asyncio.Future[pb.Frame] = asyncio.get_running_loop().create_future()
        self._waiting[frame.id] = future
        self._write(frame)
        return future

    def _write(self, frame: pb.Frame) -> None:
        body = frame.SerializeToString()
        self._out.append(_LENGTH.pack(len(body)) + body)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.inbox_seq > self._acked_inbox:  # one cumulative PushAck per turn
            self._acked_inbox = self.inbox_seq
            body = pb.Frame(push_ack=pb.PushAck(inbox_seq=self.inbox_seq)).SerializeToString()
            self._out.append(_LENGTH.pack(len(body)) + body)
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos, end = 0, len(buf)
        pushed = False
        while end - pos >= 4:
            (length,) = _LENGTH.unpack_from(buf, pos)
            if end - pos - 4 < length:
                break
            frame = pb.Frame.FromString(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
            kind = frame.WhichOneof("body")
            if kind == "push":
                pushed = self._take(frame.push.entries) or pushed
            elif kind == "sync_response" and frame.id == _SYNC_ID:
                self._syncing = False
                taken = self._take(frame.sync_response.entries, synced=True)
                pushed = taken or pushed
                if frame.sync_response.has_more:
                    self._sync()
            elif kind == "error" and frame.id == _SYNC_ID:
                self._syncing = False  # the next gap or SyncHint asks again
            elif kind == "sync_hint":
                if frame.sync_hint.inbox_head > self.inbox_seq:
                    self._sync()
            elif frame.id in self._waiting:
                future = self._waiting.pop(frame.id)
                if kind == "error":
                    future.set_exception(RuntimeError(f"error {frame.error.code}: {frame.error.message}"))
                else:
                    future.set_result(frame)
        del buf[:pos]
        if pushed:
            self._wake.set()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    def _take(self, entries: Any, synced: bool = False) -> bool:
        """Deliver `entries` in inbox order up to the first gap (then pull from the
        cursor); True when the cursor moved."""
        moved = False
        for entry in entries:
            if entry.inbox_seq <= self.inbox_seq:
                continue
            if entry.inbox_seq > self.inbox_seq + 1:  # a push lost on the way: pull it
                self._sync()
                break
            self.inbox_seq = entry.inbox_seq
            moved = True
            if synced:
                self.synced += 1
            message = entry.message
            if message.seq <= self._last_seq.get(message.conversation_id, 0):
                self.duplicate_entries += 1
                continue
            self._last_seq[message.conversation_id] = message.seq
            self._inbox.append(message)
        return moved

    def _sync(self) -> None:
        if not self._syncing and self._transport is not None:
            self._syncing = True
            self._write(pb.Frame(id=_SYNC_ID, sync=pb.SyncRequest(
                after_inbox_seq=self.inbox_seq, limit=256)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._closed = True
        self._wake.set()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(LeanClosed("connection lost"))
        self._waiting.clear()


async def tcp_endpoint(url: str) -> tuple[str, int]:
    """The raw TCP endpoint of the server at `url`, from its dispatch answer."""
    from chatplane.bench.rawclient import Dispatcher

    dispatcher = Dispatcher(url)
    try:
        endpoints = await dispatcher.endpoints("bench")
    except Exception as exc:
        raise SetupError(f"cannot ask {url} for its TCP endpoint: {exc!r}") from exc
    finally:
        await dispatcher.close()
    if not endpoints:
        raise SetupError(f"{url} offers no raw TCP endpoint (the lean client needs one)")
    host, _, port = endpoints[0]["tcp"].rpartition(":")
    return host, int(port)


def lean_connector(host: str, port: int, data_dir: str) -> Connector:
    """Lean clients on host:port, each with a token minted from the server's data dir."""
    from chatplane.bench.spread import token_signer

    signer = token_signer(data_dir)

    def make(user: str, device: str) -> ChatClient:
        return LeanClient(host, port, signer.mint(user, device))

    return make
