"""Client transports: one frame payload per WebSocket message, or length-prefixed
frames over raw TCP. A link is one connection; the Client makes a new one on
every reconnect.

TLS follows the URLs dispatch hands out: `wss://` for the WebSocket, a `tcps://`
prefix on the TCP address (`tcps://host:port`; a bare `host:port` is plain TCP).
`tls` is the context every TLS connection verifies the server with (docs/client.md).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import urllib.parse
from collections import deque
from typing import Protocol, cast

import aiohttp

from chatplane.protocol import frames
from chatplane.protocol.errors import ProtocolError


class LinkClosed(Exception):
    pass


class Link(Protocol):
    async def send(self, payload: bytes) -> None: ...

    async def recv(self) -> bytes:
        """The next frame payload; raises LinkClosed when the connection ends."""

    async def close(self) -> None: ...

    def abort(self) -> None:
        """Drop the connection at once (tests use it to cut connections)."""


class WebSocketLink:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, payload: bytes) -> None:
        try:
            await self.ws.send_bytes(payload)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise LinkClosed(str(exc)) from exc

    async def recv(self) -> bytes:
        msg = await self.ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        raise LinkClosed(f"websocket {msg.type.name.lower()}")

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        response = self.ws._response
        transport = response.connection.transport if response.connection is not None else None
        if transport is not None:
            transport.abort()
        # hands the dead connection back to aiohttp, which otherwise reports it unclosed
        response.close()


class _TcpFrames(asyncio.Protocol):
    """Cuts the stream into frames as bytes arrive (no await per frame)."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.reader = frames.FrameReader(max_frame_bytes)
        self.frames: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self.error: LinkClosed | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.frames.extend(self.reader.feed_data(data))
        except ProtocolError as exc:
            self.error = LinkClosed(f"bad frame from server: {exc.message}")
            if self.transport is not None:
                self.transport.abort()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self.error = LinkClosed(f"tcp closed: {exc}" if exc else "tcp closed")
        self.writable.set()
        self._wake()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class TcpLink:
    def __init__(self, protocol: _TcpFrames) -> None:
        self.protocol = protocol

    async def send(self, payload: bytes) -> None:
        protocol = self.protocol
        transport = protocol.transport
        if protocol.error is not None or transport is None or transport.is_closing():
            raise LinkClosed("tcp closed")
        transport.write(frames.prefix(payload))
        if not protocol.writable.is_set():
            await protocol.writable.wait()
            if protocol.error is not None:
                raise protocol.error

    async def recv(self) -> bytes:
        protocol = self.protocol
        while not protocol.frames:
            if protocol.error is not None:
                raise protocol.error
            protocol.waiter = asyncio.get_running_loop().create_future()
            await protocol.waiter
        return protocol.frames.popleft()

    async def close(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.close()

    def abort(self) -> None:
        if self.protocol.transport is not None:
            self.protocol.transport.abort()


TLS_TCP = "tcps://"


def tls_context(ca: str | None = None) -> ssl.SSLContext:
    """What the SDK verifies servers with: the system CAs, or only `ca` (a PEM file).
    One context per CA file version, shared by every client of the process: loading
    the system CAs costs tens of milliseconds of CPU, and a crowd of 2,500 clients
    made one each, blocking its event loop for minutes."""
    return _context(ca, os.stat(ca).st_mtime_ns if ca else 0)


@functools.lru_cache(maxsize=16)
def _context(ca: str | None, version: int) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()


async def dispatch(http: aiohttp.ClientSession, base_url: str, uid: str,
                   tls: ssl.SSLContext | None = None) -> list[dict[str, str]]:
    """Ask ipconf where to connect; a ranked list of endpoints."""
    url = f"{base_url.rstrip('/')}/v1/dispatch?{urllib.parse.urlencode({'uid': uid})}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5),
                        ssl=tls if tls is not None else True) as response:
        body = json.loads(await response.text())
        if response.status != 200:
            raise LinkClosed(f"dispatch: {response.status} {body.get('error', '')}")
        return list(body["endpoints"])


async def open_link(http: aiohttp.ClientSession, endpoint: dict[str, str], transport: str,
                    max_frame_bytes: int, timeout_s: float = 5.0,
                    tls: ssl.SSLContext | None = None) -> Link:
    if transport == "tcp":
        address = endpoint.get("tcp", "")
        if not address:
            raise LinkClosed(f"gateway {endpoint.get('gateway_id')} has no TCP listener")
        secure = address.startswith(TLS_TCP)
        host, _, port = address.removeprefix(TLS_TCP).rpartition(":")
        host = host.strip("[]")
        loop = asyncio.get_running_loop()
        # the server's frames (pushes, sync pages) may exceed the client's own limit
        _, protocol = await asyncio.wait_for(loop.create_connection(
            lambda: _TcpFrames(16 * max_frame_bytes), host, int(port),
            ssl=(tls or tls_context()) if secure else None,
            server_hostname=host if secure else None), timeout_s)
        return TcpLink(protocol)
    ws = await http.ws_connect(endpoint["ws"], timeout=aiohttp.ClientWSTimeout(ws_close=2),
                               max_msg_size=0, autoping=True, compress=0,
                               ssl=tls if tls is not None else True)
    return WebSocketLink(ws)
