"""Traffic helpers for end-to-end tests: collect what each device receives,
send with acks recorded, and judge it all with the delivery checker."""

from __future__ import annotations

import asyncio
import contextlib

from chatplane.checker import DeliveryChecker
from chatplane.client import Client, Event, Message
from chatplane.protocol.errors import RequestError


async def stop_client(client: Client, reader: asyncio.Task[None] | None) -> None:
    """Close a client, then end the task that read its events."""
    await client.close()
    if reader is not None:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


class Device:
    def __init__(self, client: Client, user: str, device: str, checker: DeliveryChecker,
                 defer: bool = False) -> None:
        # defer: feed the checker in judge(), once memberships are registered
        # (a group's first message can arrive before the test learns its id)
        self.defer = defer
        self.client = client
        self.user = user
        self.device = device
        self.checker = checker
        self.received: list[Message] = []
        self._task: asyncio.Task[None] | None = None
        checker.add_device(user, device)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for message in self.client.messages():
            self.received.append(message)
            if not self.defer:
                self.checker.record_receipt(self.user, self.device, message.conversation_id,
                                            message.seq, message.message_id)

    def judge(self) -> None:
        if self.defer:
            for m in self.received:
                self.checker.record_receipt(self.user, self.device, m.conversation_id, m.seq,
                                            m.message_id)

    async def stop(self) -> None:
        await stop_client(self.client, self._task)

    def order(self, conversation_id: str) -> list[str]:
        return [m.message_id for m in self.received if m.conversation_id == conversation_id]


async def send_many(device: Device, conversation_id: str, count: int, prefix: str,
                    in_flight: int = 10) -> list[int]:
    """Send `count` messages, at most `in_flight` unacked at a time; returns
    seqs. The checker gets each ack with its cid (so it checks cid order)."""
    seqs: list[int] = []
    semaphore = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with semaphore:
            ack = await device.client.send_text(conversation_id, f"{prefix}-{i}")
            device.checker.record_ack(device.user, device.device, ack.conversation_id, ack.seq,
                                      ack.message_id, cid=ack.cid)
            seqs.append(ack.seq)

    await asyncio.gather(*(one(i) for i in range(count)))
    return seqs


async def wait_until_received(devices: list[Device], count: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(len(d.received) < count for d in devices):
        if loop.time() > deadline:
            raise AssertionError(
                "timed out: received " + ", ".join(f"{d.user}/{d.device}={len(d.received)}"
                                                   for d in devices))
        await asyncio.sleep(0.05)


async def ended(client: Client, timeout_s: float) -> RequestError:
    """What closed the client's session for good (it must end within timeout_s)."""
    async def drain() -> RequestError:
        try:
            async for _ in client.messages():
                pass
        except RequestError as exc:
            return exc
        raise AssertionError("the client ended without an error")

    return await asyncio.wait_for(drain(), timeout_s)


async def next_event(client: Client, kind: str, timeout_s: float = 10) -> Event:
    """The client's next event of `kind` (others are passed over), within `timeout_s`."""
    async def find() -> Event:
        async for event in client.events():
            if event.kind == kind:
                return event
        raise AssertionError("events ended")

    return await asyncio.wait_for(find(), timeout_s)
