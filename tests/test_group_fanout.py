"""GroupFanout (state/groups.py) on a real event loop, pushing through a real
gateway (as in `chatplane up`) to devices that record what they are sent: a
long fan-out lets other work run between its slices, and an idle group's
next message still waits out the group's interval."""

from __future__ import annotations

import asyncio

from chatplane.gateway.bulk import Handoff
from chatplane.storage.base import StoredMessage
from tests.support.fanout import fanout_to


class Device:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.frames: list[bytes] = []

    def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                   handoff: Handoff | None = None) -> bool:
        self.frames.append(payload)
        self.log.append("push")
        return True


def message(seq: int) -> StoredMessage:
    return StoredMessage(conversation_id="g", seq=seq, message_id=f"m{seq}", sender="s",
                         sender_device="d", cid=seq, text=f"t{seq}", sent_at_ms=0)


async def until(predicate: object) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.001)


async def test_other_work_runs_between_slices_of_a_large_fanout() -> None:
    log: list[str] = []
    members = [f"u{i}" for i in range(50_000)]
    devices = {m: Device(log) for m in members}
    fanout = fanout_to(devices, slice_ms=0.5)
    fanout.deliver_group("g", members, message(1))
    asyncio.get_running_loop().call_soon(log.append, "other")
    await until(lambda: all(d.frames for d in devices.values()))
    # the other callback ran while the group still had members to push to
    assert 0 < log.index("other") < len(members)
    assert len(log) == len(members) + 1


async def test_an_idle_group_waits_out_its_interval() -> None:
    log: list[str] = []
    device = Device(log)
    fanout = fanout_to({"u": device}, interval_ms=2000)
    fanout.deliver_group("g", ["u"], message(1))
    await until(lambda: len(device.frames) == 1)
    await asyncio.sleep(0.01)  # the fan-out is over: nothing is pending
    fanout.deliver_group("g", ["u"], message(2))
    await asyncio.sleep(0.01)
    assert len(device.frames) == 1  # held: the group flushed less than 2 s ago
    await until(lambda: len(device.frames) == 2)
