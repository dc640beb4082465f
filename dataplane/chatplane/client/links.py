"""Client transports: one frame payload per WebSocket message, or length-prefixed
frames over raw TCP. A link is one connection; the Client makes a new one on
every reconnect."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Protocol

import aiohttp

from chatplane.protocol import frames


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
        transport = self.ws._response.connection.transport if (
            self.ws._response.connection is not None) else None
        if transport is not None:
            transport.abort()


class TcpLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 max_frame_bytes: int) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame_bytes = max_frame_bytes

    async def send(self, payload: bytes) -> None:
        if self.writer.is_closing():
            raise LinkClosed("tcp closed")
        self.writer.write(frames.prefix(payload))
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise LinkClosed(str(exc)) from exc

    async def recv(self) -> bytes:
        try:
            header = await self.reader.readexactly(4)
            (length,) = frames.LENGTH.unpack(header)
            if length > 4 * self.max_frame_bytes:
                raise LinkClosed(f"server frame of {length} bytes")
            return await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise LinkClosed(str(exc)) from exc

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def abort(self) -> None:
        self.writer.transport.abort()


async def dispatch(http: aiohttp.ClientSession, base_url: str, uid: str) -> list[dict[str, str]]:
    """Ask ipconf where to connect; a ranked list of endpoints."""
    url = f"{base_url.rstrip('/')}/v1/dispatch?{urllib.parse.urlencode({'uid': uid})}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        body = json.loads(await response.text())
        if response.status != 200:
            raise LinkClosed(f"dispatch: {response.status} {body.get('error', '')}")
        return list(body["endpoints"])


async def open_link(http: aiohttp.ClientSession, endpoint: dict[str, str], transport: str,
                    max_frame_bytes: int, timeout_s: float = 5.0) -> Link:
    if transport == "tcp":
        if not endpoint.get("tcp"):
            raise LinkClosed(f"gateway {endpoint.get('gateway_id')} has no TCP listener")
        host, _, port = endpoint["tcp"].rpartition(":")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), timeout_s)
        return TcpLink(reader, writer, max_frame_bytes)
    ws = await http.ws_connect(endpoint["ws"], timeout=aiohttp.ClientWSTimeout(ws_close=2),
                               max_msg_size=0, autoping=True, compress=0)
    return WebSocketLink(ws)
