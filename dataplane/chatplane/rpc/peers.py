"""Client side of the gRPC links: one channel per peer address, reused.

Channels reconnect by themselves with a short backoff (100 ms to 1 s), so a
peer that restarts on the same address is reachable again within a second.
Every call carries a deadline (`deadline_s`); `retriable` says which failures
may be retried on the same or another instance (the calls are idempotent).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import grpc

from chatplane.rpc.linksecurity import CertWatch, LinkSecurity

T = TypeVar("T")
S = TypeVar("S")

RETRIABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
})

CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


RETIRE_AFTER_S = 30.0  # longer than any call's deadline


def _target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """The channel target and options of `address`: one host:port, or several IPv4
    host:port joined by commas (a peer region's ims, peerlist.py), each call sent to
    one that is up (round robin: a dead one is skipped while it reconnects)."""
    if "," not in address:
        return address, CHANNEL_OPTIONS
    return f"ipv4:{address}", [*CHANNEL_OPTIONS, ("grpc.lb_policy_name", "round_robin")]


def parse_addrs(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


def retriable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRIABLE


class Peers:
    """The channels of one process; `security` makes them mTLS or adds the
    per-role credential (rpc/linksecurity.py)."""

    def __init__(self, deadline_s: float, security: LinkSecurity) -> None:
        self.deadline_s = deadline_s
        self.security = security
        self._watch = CertWatch(security)
        self._channels: dict[str, grpc.aio.Channel] = {}
        # a stub makes a callable per method of its service (tens of µs): one per channel
        self._stubs: dict[tuple[str, Callable[[grpc.aio.Channel], object]], object] = {}
        self._retiring: dict[asyncio.Task[None], list[grpc.aio.Channel]] = {}

    def channel(self, address: str, dials: str) -> grpc.aio.Channel:
        """The channel to `address`, a `dials` role (`im`, `state`, `gateway`)."""
        fresh = self._watch.poll()  # renewed TLS files: new channels from now on
        if fresh is not None:
            self.security = fresh
            self._retire(list(self._channels.values()))
            self._channels = {}
            self._stubs = {}
        channel = self._channels.get(address)
        if channel is None:
            target, options = _target(address)
            channel = self._channels[address] = self.security.open_channel(
                target, dials, options)
        return channel

    def stub(self, address: str, dials: str, kind: Callable[[grpc.aio.Channel], S]) -> S:
        """A `kind` stub (e.g. `ImStub`) on the channel to `address`, reused."""
        channel = self.channel(address, dials)  # (new channels drop the stubs made before)
        found = self._stubs.get((address, kind))
        if found is None:
            found = self._stubs[(address, kind)] = kind(channel)
        return cast(S, found)

    def _retire(self, channels: list[grpc.aio.Channel]) -> None:
        """Close the channels of the previous certificate once their calls are done."""
        async def later() -> None:
            await asyncio.sleep(RETIRE_AFTER_S)
            for channel in channels:
                await channel.close(grace=None)

        task = asyncio.get_running_loop().create_task(later())
        self._retiring[task] = channels
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._stubs = {}
        for task, old in list(self._retiring.items()):
            task.cancel()
            channels += old
        for channel in channels:
            await channel.close(grace=None)


async def first_answer(
    addresses: Sequence[str],
    call: Callable[[str], Awaitable[T]],
    total_s: float,
) -> T:
    """Try `call` on each address in turn, round after round with a short
    jittered pause, until one answers or `total_s` passes (then the last
    error is raised). Only retriable failures move on to the next address."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_s
    pause = 0.05
    last: BaseException = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        details="no instance known")
    while True:
        for address in addresses:
            try:
                return await call(address)
            except grpc.aio.AioRpcError as exc:
                if not retriable(exc):
                    raise
                last = exc
            if loop.time() >= deadline:
                raise last
        if loop.time() + pause >= deadline:
            raise last
        await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.5)
