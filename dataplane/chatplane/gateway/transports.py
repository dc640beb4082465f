"""The two ways bytes reach a Connection: WebSocket and raw TCP.

Both are asyncio protocols on the socket, and thin: cut the stream into
frame payloads, hand them over, write what the connection queued. Neither
knows the chatplane protocol. aiohttp only answers a WebSocket's upgrade
request; the gateway serves the socket from then on (protocol/websocket.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from aiohttp import web

from chatplane.gateway import admission
from chatplane.gateway.bulk import Lent, SocketLender
from chatplane.gateway.connection import Connection
from chatplane.gateway.service import Gateway
from chatplane.protocol import frames, websocket
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.v1 import frames_pb2 as pb

# A peer that lets this much pile up unread is dropped (it resumes with sync).
MAX_WRITE_BUFFER = 8 * 1024 * 1024
# How long a close frame waits for the peer's own before the socket is closed.
WS_CLOSE_TIMEOUT_S = 5.0


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


_ws_framed = _Shared(websocket.binary_frame)
_tcp_framed = _Shared(frames.prefix)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """`GET /ws`: answer the upgrade, then take the socket from aiohttp (the
    request, its parser and tasks would cost ~13 KiB per idle connection;
    docs/benchmarks.md, W3) and serve it with a `WebSocketProtocol`."""
    gateway: Gateway = request.app[GATEWAY]
    try:
        answer = websocket.accept(request.headers)
    except websocket.HandshakeError as exc:
        return web.Response(status=400, text=str(exc))
    lent = request.transport
    if not isinstance(lent, admission.HandlerTransport):
        return web.Response(status=500, text="this listener cannot hand a socket over")
    try:
        lent.guard.hand_over(answer, lambda ip: WebSocketProtocol(gateway, ip))
    except ConnectionError:
        pass
    # never written: aiohttp was told the connection is gone
    return web.Response(status=101)


class _GatewaySocket(asyncio.Protocol):
    """What both socket protocols hold: the admission slot of the peer's
    address, the socket's writer, and its connection."""

    __slots__ = ("conn", "gateway", "ip", "out")

    def __init__(self, gateway: Gateway, ip: str = "") -> None:
        self.gateway = gateway
        self.ip = ip  # counted in the gateway's admission while set
        self.out: SocketLender | None = None
        self.conn: Connection | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip:
            self.gateway.admission.release(self.ip)
            self.ip = ""
        if self.conn is not None:
            self.conn.on_closed()
        if self.out is not None:
            self.out.lost()


class WebSocketProtocol(_GatewaySocket):
    """An upgraded WebSocket, served like a raw TCP socket (`TcpFrameProtocol`):
    each binary message is one frame. Frames go straight to the transport,
    in order, with no task per write, and the socket can be lent to the
    group writer (gateway/bulk.py). Pings are answered, a client's close
    is answered and the socket closed; a close of ours waits for the
    client's answer for `WS_CLOSE_TIMEOUT_S` at most."""

    __slots__ = ("_timer", "closing", "reader")

    def __init__(self, gateway: Gateway, ip: str) -> None:
        # ip: counted in the gateway's admission (handed over by GuardedHttp)
        super().__init__(gateway, ip)
        max_bytes = gateway.settings.limits.max_frame_bytes
        # messages over twice the limit close the socket (1009); between the
        # limit and that, the codec answers FRAME_TOO_LARGE with an Error frame
        self.reader = websocket.WsReader(2 * max_bytes)
        self.closing = False  # our close frame is written (or queued)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not an asyncio.Transport subclass
        self.out = SocketLender(cast(asyncio.Transport, transport), MAX_WRITE_BUFFER)
        peer = transport.get_extra_info("peername")
        self.conn = Connection(self.gateway, self, peer=str(peer[0] if isinstance(peer, tuple) else peer))
        self.gateway.opened(self.conn)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            messages = self.reader.feed_data(data)
        except websocket.WsError as exc:
            self.close(exc.code, exc.reason)
            return
        for opcode, payload in messages:
            if opcode == websocket.CLOSE:
                self._closed_by_peer(payload)
                return
            if self.closing or conn.session.closed:
                continue  # only the peer's close matters now
            if opcode == websocket.BINARY:
                conn.on_payload(payload)  # a session that ends closes us (flush_now)
            elif opcode == websocket.TEXT:
                conn.on_protocol_error(
                    ProtocolError(ErrorCode.BAD_FRAME, "text messages are not frames; send binary"))
            elif opcode == websocket.PING and self.out is not None:
                self.out.write(websocket.control_frame(websocket.PONG, payload))

    def _closed_by_peer(self, payload: bytes) -> None:
        if self.out is None:
            return
        if not self.closing:  # answer it: OK, or the error in its payload
            try:
                websocket.close_code(payload)
                self.closing = True
                self.out.write(websocket.close_frame(websocket.NORMAL))
            except websocket.WsError as exc:
                self.closing = True
                self.out.write(websocket.close_frame(exc.code, exc.reason))
        self.out.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _close_timeout(self) -> None:
        self._timer = None
        if self.out is not None and self.out.transport is not None:
            self.out.transport.abort()

    # Transport interface for the Connection
    def write(self, payloads: list[bytes]) -> None:
        if self.out is not None and not self.closing:
            self.out.write(_ws_framed(payloads[0]) if len(payloads) == 1
                           else b"".join(websocket.binary_frame(p) for p in payloads))

    def lend(self, payload: bytes) -> Lent | None:
        """The socket for the group writer, with `payload` framed, when
        nothing is queued on it (else None: write it instead)."""
        if self.out is None or self.closing:
            return None
        return self.out.lend(_ws_framed(payload))

    def close(self, code: int = websocket.POLICY_VIOLATION, reason: str = "") -> None:
        """Send a close frame (`code`: the server's reason), after what is
        queued; the socket closes on the client's answer, or at the timeout."""
        if self.out is None or self.closing:
            return
        self.closing = True
        self.out.write(websocket.close_frame(code, reason))
        self._timer = asyncio.get_running_loop().call_later(WS_CLOSE_TIMEOUT_S, self._close_timeout)


class TcpFrameProtocol(_GatewaySocket):
    """Raw TCP: 4-byte big-endian length, then the frame."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.reader = frames.FrameReader(gateway.settings.limits.max_frame_bytes)

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
