"""`GuardedHttp.hand_over` on real sockets: a route answers a request by
taking the socket from aiohttp (as the gateway's `/ws` does after the
upgrade). aiohttp lets go of the connection, the socket stays open and
counted by admission until the new protocol's side closes it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from chatplane.gateway import admission
from chatplane.settings import Abuse

ANSWER = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"


class Echo(asyncio.Protocol):
    """Echoes bytes; releases its admission count when the socket goes."""

    def __init__(self, gate: admission.Admission, ip: str) -> None:
        self.gate, self.ip = gate, ip
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.release(self.ip)


async def test_a_handed_over_socket_leaves_aiohttp_and_stays_counted() -> None:
    gate = admission.Admission(max_total=10, max_per_ip=10)

    async def take(request: web.Request) -> web.StreamResponse:
        lent = request.transport
        assert isinstance(lent, admission.HandlerTransport)
        lent.guard.hand_over(ANSWER, lambda ip: Echo(gate, ip))
        return web.Response(status=101)  # never written

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.add_routes([web.get("/take", take), web.get("/hello", hello)])
    runner, server, port = await admission.start_public_http(app, "127.0.0.1", 0, gate, Abuse())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # an ordinary request first, on the same connection (keep-alive)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /take HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(len(ANSWER)), 5) == ANSWER
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        for _ in range(100):  # aiohttp's handler task ends on its own
            if not runner.server.connections:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        assert runner.server.connections == []  # type: ignore[union-attr]
        assert gate.total == 1
        writer.write(b"still here")  # nothing of aiohttp's closed the socket
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
        writer.close()
        for _ in range(100):
            if gate.total == 0:
                break
            await asyncio.sleep(0.01)
        assert gate.total == 0
    finally:
        server.close()
        await runner.cleanup()
