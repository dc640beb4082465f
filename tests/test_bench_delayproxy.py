"""The bench's delay proxy (chatplane/bench/delayproxy.py, `bench regions --rtt-ms`):
every chunk arrives at least D ms after it was sent, each way, and the bytes come out
in the order they went in (here through an echo server behind the proxy)."""

from __future__ import annotations

import asyncio
import time

from chatplane.bench.delayproxy import DelayProxy

DELAY_MS = 40


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_each_way_is_delayed_and_order_is_kept() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = DelayProxy(("127.0.0.1", echo.sockets[0].getsockname()[1]), DELAY_MS)
    port = await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        assert time.monotonic() - started >= 2 * DELAY_MS / 1000  # there and back

        sent = b"".join(f"{i:05d};".encode() for i in range(2000))
        for i in range(0, len(sent), 97):  # many small writes, interleaved with the echo
            writer.write(sent[i:i + 97])
            await asyncio.sleep(0)
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(sent)), 10)
        assert got == sent
    finally:
        writer.close()
        await proxy.close()
        echo.close()
