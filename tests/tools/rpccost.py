"""What one request and its reply cost in CPU on an open grpc.aio stream, against
length-prefixed frames on a uvloop asyncio Protocol (issue 21: where the cluster's
CPU per message goes). A harness, not part of the product.

Two processes on loopback, one bidirectional link, `--window` requests in flight,
`--messages` requests of `--size` bytes, each answered with its first 50 bytes; the
CPU of each process (user + system) over the run, per message:

    python3 -m tests.tools.rpccost [--transport grpc|frames|both] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import grpc
import uvloop

SERVICE, METHOD = "rpccost.Bench", "Stream"
REPLY_BYTES = 50
PREFIX = struct.Struct(">I")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- grpc.aio: raw bytes on a bidi stream (no codegen: what the library costs) --

async def serve_grpc(port: int, ready: asyncio.Event) -> None:
    async def stream(requests: AsyncIterator[bytes], _: object) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request[:REPLY_BYTES]

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        METHOD: grpc.stream_stream_rpc_method_handler(stream)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


async def call_grpc(port: int, messages: int, size: int, window: int) -> float:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await channel.channel_ready()
    call = channel.stream_stream(f"/{SERVICE}/{METHOD}")()
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()

    async def read() -> None:
        got = 0
        async for _ in call:
            got += 1
            slots.release()
            if got == messages:
                done.set()
                return

    reader = asyncio.ensure_future(read())
    began = cpu_s()
    for _ in range(messages):
        await slots.acquire()
        await call.write(b"x" * size)
    await done.wait()
    spent = cpu_s() - began
    await call.done_writing()
    await reader
    await channel.close()
    return spent


# -- frames: a 4-byte length, then the bytes, on an asyncio Protocol ----------

class _Frames(asyncio.Protocol):
    def __init__(self, on_frame: Callable[[bytes], None]) -> None:
        self.buffer = b""
        self.on_frame = on_frame

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while len(buffer) >= 4:
            (length,) = PREFIX.unpack_from(buffer)
            if len(buffer) < 4 + length:
                break
            self.on_frame(buffer[4:4 + length])
            buffer = buffer[4 + length:]
        self.buffer = buffer


class _Echo(_Frames):
    """The serving side: each frame answered with its first bytes."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def _answer(self, frame: bytes) -> None:
        assert self.transport is not None
        reply = frame[:REPLY_BYTES]
        self.transport.write(PREFIX.pack(len(reply)) + reply)


async def serve_frames(port: int, ready: asyncio.Event) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port)
    ready.set()
    await server.serve_forever()


async def call_frames(port: int, messages: int, size: int, window: int) -> float:
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()
    got = 0

    def answered(_: bytes) -> None:
        nonlocal got
        got += 1
        slots.release()
        if got == messages:
            done.set()

    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: _Frames(answered), "127.0.0.1", port)
    began = cpu_s()
    for _ in range(messages):
        await slots.acquire()
        transport.write(PREFIX.pack(size) + b"x" * size)
    await done.wait()
    spent = cpu_s() - began
    transport.close()
    return spent


def run_server(transport: str, port: int) -> None:
    async def main() -> None:
        ready = asyncio.Event()
        serving = asyncio.ensure_future(
            (serve_grpc if transport == "grpc" else serve_frames)(port, ready))
        await ready.wait()
        print("ready", flush=True)
        # the CPU of the run: the client tells us when it starts and ends
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.readline()
        began = cpu_s()
        await reader.readline()
        print(f"{cpu_s() - began:.6f}", flush=True)
        serving.cancel()

    uvloop.run(main())


def measure(transport: str, messages: int, size: int, window: int) -> tuple[float, float]:
    """(client, server) CPU µs per message."""
    port = 20000 + os.getpid() % 20000
    server = subprocess.Popen([sys.executable, "-m", "tests.tools.rpccost", "--serve", transport,
                               "--port", str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        assert server.stdout.readline().strip() == "ready"
        call = call_grpc if transport == "grpc" else call_frames
        server.stdin.write("go\n")
        server.stdin.flush()
        client = uvloop.run(call(port, messages, size, window))
        server.stdin.write("end\n")
        server.stdin.flush()
        served = float(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
    return client * 1e6 / messages, served * 1e6 / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("grpc", "frames", "both"), default="both")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--serve", choices=("grpc", "frames"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.port)
        return
    for transport in (("grpc", "frames") if args.transport == "both" else (args.transport,)):
        began = time.perf_counter()
        client, server = measure(transport, args.messages, args.size, args.window)
        print(f"{transport:6}  client {client:7.1f} µs/msg  server {server:7.1f} µs/msg  "
              f"({args.messages} messages, {time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
