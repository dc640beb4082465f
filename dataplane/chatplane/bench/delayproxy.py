"""A TCP proxy that delays every chunk by D ms each way: injected round-trip time
for measurements (this kernel has no sch_netem, so `tc qdisc ... netem` fails).

A bench tool only: `chatplane bench regions --rtt-ms` starts one per direction on
the cross-region link of the regions it starts; nothing that serves chat uses it.
Each accepted connection gets one connection to the target; each direction
is a reader that stamps every chunk it reads with `now + D` and a writer that
sends the chunks in that order once their time has come, so order is kept per
direction and a connection's round trip grows by 2 D. The queue between them
is bounded (`MAX_CHUNKS`): a slow side pushes back on the reader instead of
buffering without end. The proxy exits by itself after `--max-seconds`.

    python3 -m chatplane.bench.delayproxy --listen 127.0.0.1:19191 \\
        --target 127.0.0.1:9191 --delay-ms 25 --max-seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

MAX_CHUNKS = 256  # per direction; at most this many chunks (64 KiB each) in flight
CHUNK = 65536


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """reader -> writer, every chunk written `delay_s` after it was read, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_CHUNKS)

    async def read() -> None:
        while chunk := await reader.read(CHUNK):
            await queue.put((time.monotonic() + delay_s, chunk))
        await queue.put((time.monotonic() + delay_s, b""))  # EOF, delayed like the data

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading


class DelayProxy:
    """Listens on `listen` and forwards to `target`, delaying each way by `delay_ms`."""

    def __init__(self, target: tuple[str, int], delay_ms: float) -> None:
        self.target = target
        self.delay_s = delay_ms / 1000
        self.server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            c_writer.close()
            return
        try:
            # both directions until both ended (or one failed: then both are closed)
            await asyncio.gather(_pump(c_reader, t_writer, self.delay_s),
                                 _pump(t_reader, c_writer, self.delay_s))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (c_writer, t_writer):
                w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


async def _main(args: argparse.Namespace) -> None:
    host, port = _split(args.listen)
    proxy = DelayProxy(_split(args.target), args.delay_ms)
    bound = await proxy.start(host, port)
    print(f"delayproxy {host}:{bound} -> {args.target} +{args.delay_ms:g} ms each way",
          flush=True)
    await asyncio.sleep(args.max_seconds)
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, required=True, help="delay each way")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="exit after this long (default 600)")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
