"""The two ways bytes reach a Connection: WebSocket (aiohttp) and raw TCP.

Both are thin: cut the stream into frame payloads, hand them over, write what
the connection queued. Neither knows the protocol.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import cast

from aiohttp import WSCloseCode, WSMsgType, web

from chatplane.gateway import admission
from chatplane.gateway.bulk import Lent, SocketLender
from chatplane.gateway.connection import Connection
from chatplane.gateway.service import Gateway
from chatplane.protocol import frames
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.v1 import frames_pb2 as pb

# A peer that lets this much pile up unread is dropped (it resumes with sync).
MAX_WRITE_BUFFER = 8 * 1024 * 1024

_WS_LEN1 = struct.Struct("!BB")
_WS_LEN2 = struct.Struct("!BBH")
_WS_LEN3 = struct.Struct("!BBQ")


def ws_control_frame(opcode: int, data: bytes) -> bytes:
    """An unmasked, final control frame (at most 125 bytes of data)."""
    return _WS_LEN1.pack(opcode, len(data)) + data


def ws_binary_frame(payload: bytes) -> bytes:
    """An unmasked, final, binary WebSocket frame (server to client)."""
    n = len(payload)
    if n < 126:
        return _WS_LEN1.pack(0x82, n) + payload
    if n < 65536:
        return _WS_LEN2.pack(0x82, 126, n) + payload
    return _WS_LEN3.pack(0x82, 127, n) + payload


class _Shared:
    """The framed form of the last payload written: a large-group push is the
    same bytes for every member, so it is framed once, not once per member."""

    def __init__(self, frame: Callable[[bytes], bytes]) -> None:
        self.frame = frame
        self.payload: bytes | None = None
        self.framed = b""

    def __call__(self, payload: bytes) -> bytes:
        if payload is not self.payload:
            self.payload, self.framed = payload, self.frame(payload)
        return self.framed


_ws_framed = _Shared(ws_binary_frame)
_tcp_framed = _Shared(frames.prefix)


class WebSocketTransport:
    """Frames go straight to the socket's transport, in order, with no task
    per write. aiohttp writes nothing on its own (pings and a client's
    close are answered here: `autoping=False`, `autoclose=False`), so the
    socket can be lent to the group writer like a raw TCP one
    (gateway/bulk.py); the close handshake, the one async part, waits until
    it is given back."""

    __slots__ = ("_closer", "out", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None) -> None:
        self.ws = ws
        # uvloop's transport is not an asyncio.Transport subclass
        self.out = (SocketLender(cast(asyncio.Transport, transport), MAX_WRITE_BUFFER)
                    if transport is not None else None)
        self._closer: asyncio.Task[None] | None = None

    def write(self, payloads: list[bytes]) -> None:
        if self.out is None or self._closer is not None:
            return
        self.out.write(_ws_framed(payloads[0]) if len(payloads) == 1
                       else b"".join(ws_binary_frame(p) for p in payloads))

    def lend(self, payload: bytes) -> Lent | None:
        """The socket for the group writer, with `payload` framed, when
        nothing is queued on it (else None: write it instead)."""
        if self.out is None or self._closer is not None:
            return None
        return self.out.lend(_ws_framed(payload))

    def pong(self, data: bytes) -> None:
        if self.out is not None and self._closer is None:
            self.out.write(ws_control_frame(0x8A, data))

    def close(self, code: int = WSCloseCode.POLICY_VIOLATION) -> None:
        """Close the WebSocket (`code`: the server's reason; a client's close
        is answered with OK)."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close(code))

    async def drain(self) -> None:
        """Wait for the close handshake, if one started (before the handler ends)."""
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def _close(self, code: int) -> None:
        if self.out is not None:  # aiohttp writes the close frame itself
            await self.out.returned()
        try:
            if not self.ws.closed:
                await self.ws.close(code=code)
        except (ConnectionError, RuntimeError):
            pass


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    gateway: Gateway = request.app[GATEWAY]
    max_bytes = gateway.settings.limits.max_frame_bytes
    # aiohttp refuses (close 1009) what is over twice the limit; between the
    # limit and that, our codec answers FRAME_TOO_LARGE with an Error frame.
    # autoping and autoclose off: aiohttp would write pongs and close replies
    # itself, possibly into the middle of a frame the group writer is sending
    ws = web.WebSocketResponse(max_msg_size=2 * max_bytes, compress=False, autoping=False,
                               autoclose=False)
    await ws.prepare(request)
    transport = WebSocketTransport(ws, request.transport)
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
            elif msg.type is WSMsgType.PING:
                transport.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                pass
            else:
                if msg.type is WSMsgType.CLOSE:  # answered once the socket is not lent
                    transport.close(WSCloseCode.OK)
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
        self.out: SocketLender | None = None
        self.conn: Connection | None = None
        self.ip = ""  # counted in the gateway's admission while set

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = admission.peer_ip(transport)
        reason = self.gateway.admission.admit(ip)
        if reason:  # over a cap: one Error frame, closed; nothing is read
            error = pb.Frame(error=pb.Error(code=int(ErrorCode.TOO_MANY_CONNECTIONS),
                                            message=reason, retriable=True, fatal=True))
            cast(asyncio.Transport, transport).write(frames.prefix(error.SerializeToString()))
            transport.close()
            return
        self.ip = ip
        # uvloop's transport is not an asyncio.Transport subclass
        self.out = SocketLender(cast(asyncio.Transport, transport), MAX_WRITE_BUFFER)
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
        if self.ip:
            self.gateway.admission.release(self.ip)
            self.ip = ""
        if self.conn is not None:
            self.conn.on_closed()
        if self.out is not None:
            self.out.lost()

    # Transport interface for the Connection
    def write(self, payloads: list[bytes]) -> None:
        if self.out is not None:
            self.out.write(_tcp_framed(payloads[0]) if len(payloads) == 1
                           else b"".join(frames.prefix(p) for p in payloads))

    def lend(self, payload: bytes) -> Lent | None:
        """The socket for the group writer (gateway/bulk.py), with `payload`
        framed, when nothing is queued on it (else None: write it instead)."""
        return self.out.lend(_tcp_framed(payload)) if self.out is not None else None

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


GATEWAY = web.AppKey("gateway", Gateway)
