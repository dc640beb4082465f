"""The two ways bytes reach a Connection: WebSocket (aiohttp) and raw TCP.

Both are thin: cut the stream into frame payloads, hand them over, write what
the connection queued. Neither knows the protocol.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

from aiohttp import WSCloseCode, WSMsgType, web

from chatplane.gateway.connection import Connection
from chatplane.gateway.service import Gateway
from chatplane.protocol import frames
from chatplane.protocol.errors import ErrorCode, ProtocolError


class WebSocketTransport:
    """Writes go through one short-lived flush task, so an idle connection
    holds no task besides aiohttp's reader."""

    __slots__ = ("_closing", "_flusher", "_queue", "ws")

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._queue: deque[bytes] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    def write(self, payloads: list[bytes]) -> None:
        self._queue.extend(payloads)
        self._kick()

    def close(self) -> None:
        self._closing = True
        self._kick()

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def drain(self) -> None:
        """Wait until everything queued was written (before the handler ends)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        try:
            while self._queue:
                await self.ws.send_bytes(self._queue.popleft())
            if self._closing and not self.ws.closed:
                await self.ws.close(code=WSCloseCode.POLICY_VIOLATION)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self._queue.clear()


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    gateway: Gateway = request.app[GATEWAY]
    max_bytes = gateway.settings.limits.max_frame_bytes
    # aiohttp refuses (close 1009) what is over twice the limit; between the
    # limit and that, our codec answers FRAME_TOO_LARGE with an Error frame.
    ws = web.WebSocketResponse(max_msg_size=2 * max_bytes, compress=False, autoping=True)
    await ws.prepare(request)
    transport = WebSocketTransport(ws)
    conn = Connection(gateway, transport, peer=str(request.remote))
    gateway.opened(conn)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                conn.on_payload(msg.data)
            elif msg.type is WSMsgType.TEXT:
                conn.on_protocol_error(
                    ProtocolError(ErrorCode.BAD_FRAME, "text messages are not frames; send binary")
                )
            else:
                break
            if conn.session.closed:
                break
    finally:
        conn.on_closed()
        if not ws.closed:
            await transport.drain()
    return ws


class TcpFrameProtocol(asyncio.Protocol):
    """Raw TCP: 4-byte big-endian length, then the frame."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.reader = frames.FrameReader(gateway.settings.limits.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.conn = Connection(self.gateway, self, peer=str(peer))
        self.gateway.opened(self.conn)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.session.closed:
            return
        try:
            payloads = self.reader.feed_data(data)
        except ProtocolError as exc:
            conn.on_protocol_error(exc)
            return
        for payload in payloads:
            conn.on_payload(payload)
            if conn.session.closed:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.conn.on_closed()
        self.transport = None

    # Transport interface for the Connection
    def write(self, payloads: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(frames.prefix(p) for p in payloads))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


GATEWAY = web.AppKey("gateway", Gateway)
