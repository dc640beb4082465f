"""Large groups (read diffusion) on a real server, with the threshold set low so
the rules are exercised by a few clients: pushes and pulls instead of inbox
entries, catch-up by sync, membership boundaries, crossing the threshold both
ways, and connection cuts — every device exactly once, in seq order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.proxy import ChaosProxy
from tests.support.server import ServerProcess
from tests.support.social import admin_group, befriend
from tests.support.traffic import Device

pytestmark = pytest.mark.slow

THRESHOLD = 5
ENV = {"CHATPLANE_LARGE_GROUP_THRESHOLD": str(THRESHOLD)}


@pytest.fixture
def large_server(data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir, env=ENV)
    proc.start()
    yield proc
    proc.stop()


async def online(server: ServerProcess, signer: TokenSigner, checker: DeliveryChecker,
                 users: list[str]) -> list[Device]:
    devices = []
    for user in users:
        client = Client(server.url, signer.mint(user, "phone"))
        await client.connect()
        device = Device(client, user, "phone", checker, defer=True)
        device.start()
        devices.append(device)
    return devices


def seqs(device: Device, conversation_id: str) -> list[int]:
    return [m.seq for m in device.received if m.conversation_id == conversation_id]


async def wait_for(predicate: object, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def first_seqs(client: Client, count: int) -> list[int]:
    """The seqs of the first `count` messages the client yields."""
    got: list[int] = []
    async for m in client.messages():
        got.append(m.seq)
        if len(got) == count:
            break
    return got


async def send_all(device: Device, conversation_id: str, count: int, tag: str) -> None:
    for i in range(count):
        ack = await device.client.send_text(conversation_id, f"{tag}-{i}")
        device.checker.record_ack(device.user, device.device, ack.conversation_id, ack.seq,
                                  ack.message_id)


async def test_read_diffusion_delivers_everyone_exactly_once(large_server: ServerProcess,
                                                            signer: TokenSigner) -> None:
    checker = DeliveryChecker()
    users = [f"u{i}" for i in range(9)]
    devices = await online(large_server, signer, checker, users)
    await befriend(devices[0].client, [d.client for d in devices[1:]])
    group = await devices[0].client.create_group("big", users[1:])
    for user in users:
        checker.add_member(group, user)
    await asyncio.gather(*(send_all(d, group, 40, d.user) for d in devices[:5]))
    head = 1 + 5 * 40
    await wait_for(lambda: all(len(seqs(d, group)) == head for d in devices))
    await asyncio.sleep(0.3)
    for d in devices:
        d.judge()
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary() + str(verdict.to_dict()["failed_devices"])
    for d in devices:
        assert seqs(d, group) == list(range(1, head + 1))
        # only the creation event came through the inbox: the rest was pushed or pulled
        assert [m.seq for m in d.received if m.inbox_seq] == [1]
    # WebSocket devices: their frames went out through the group writer thread
    async with aiohttp.ClientSession() as http, http.get(f"{large_server.admin_url}/metrics") as resp:
        metrics = await resp.text()
    written = [line for line in metrics.splitlines()
               if line.startswith("chatplane_group_writer_sockets_total ")]
    assert written and float(written[0].split()[1]) > 0
    for d in devices:
        await d.stop()


async def test_offline_member_catches_up_with_sync(large_server: ServerProcess,
                                                  signer: TokenSigner) -> None:
    checker = DeliveryChecker()
    users = [f"m{i}" for i in range(7)]
    devices = await online(large_server, signer, checker, users[:6])
    group = await admin_group(large_server.admin_url, large_server.data_dir, "m0", "big", users[1:])
    for user in users:
        checker.add_member(group, user)
    await send_all(devices[1], group, 1000, "burst")
    late = Client(large_server.url, signer.mint("m6", "phone"))
    await late.connect()
    assert await first_seqs(late, 1001) == list(range(1, 1002))
    unread = {c.conversation_id: c.unread for c in await late.conversations()}
    assert unread[group] == 1000
    # one sync brought it, in bounded pages: a handful of requests, not one per message
    assert late.requests <= 2 + 1000 // 200 + 1, late.requests
    # a later Client of the same device, resumed from its position, replays nothing
    position = late.position()
    await late.close()
    await send_all(devices[1], group, 3, "after")
    resumed = Client(large_server.url, signer.mint("m6", "phone"), resume=position)
    await resumed.connect()
    assert await first_seqs(resumed, 3) == [1002, 1003, 1004]
    await resumed.close()
    for d in devices:
        await d.stop()


async def test_join_and_leave_bound_what_a_member_sees(large_server: ServerProcess,
                                                      signer: TokenSigner) -> None:
    checker = DeliveryChecker()
    users = [f"j{i}" for i in range(8)]
    devices = await online(large_server, signer, checker, users)
    owner, sender, joiner, leaver = devices[0], devices[1], devices[6], devices[7]
    await befriend(owner.client, [d.client for d in devices[1:]])
    group = await owner.client.create_group("big", [*users[1:6], "j7"])

    async def burst() -> None:
        for i in range(150):
            await sender.client.send_text(group, f"b-{i}")
            if i == 40:
                joined_at = await owner.client.add_members(group, ["j6"])
                marks["joined"] = joined_at
            if i == 100:
                marks["left"] = await leaver.client.leave(group)

    marks: dict[str, int] = {}
    await burst()
    head = 1 + 150 + 2
    await wait_for(lambda: seqs(owner, group)[-1:] == [head])
    await wait_for(lambda: seqs(joiner, group)[-1:] == [head])
    await wait_for(lambda: seqs(leaver, group)[-1:] == [marks["left"]])
    await asyncio.sleep(0.5)
    assert seqs(joiner, group) == list(range(marks["joined"], head + 1))
    assert seqs(leaver, group) == list(range(1, marks["left"] + 1))
    assert seqs(owner, group) == list(range(1, head + 1))
    for d in devices:
        await d.stop()


async def test_crossing_the_threshold_both_ways_under_cuts(
        data_dir: Path, signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, tcp=False, env=ENV)
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    server.env["CHATPLANE_GATEWAY_ADVERTISE_URL"] = f"ws://127.0.0.1:{proxy.port}/ws"
    server.start()
    try:
        checker = DeliveryChecker()
        users = [f"x{i}" for i in range(8)]
        devices = await online(server, signer, checker, users)
        owner = devices[0]
        await befriend(owner.client, [d.client for d in devices[1:]])
        group = await owner.client.create_group("grows", users[1:4])  # 4 members: small
        for user in users[:4]:
            checker.add_member(group, user)

        async def traffic() -> None:
            for i in range(240):
                ack = await devices[1].client.send_text(group, f"t-{i}")
                checker.record_ack("x1", "phone", group, ack.seq, ack.message_id)
                if i == 60:
                    await owner.client.add_members(group, users[4:])  # 8 members: large
                if i == 120:
                    proxy.cut_all()
                if i == 170:
                    await owner.client.kick(group, "x7")
                    await owner.client.kick(group, "x6")
                    await owner.client.kick(group, "x5")  # 5 members: small again
                if i == 200:
                    proxy.cut_all()

        await traffic()
        head = 1 + 240 + 1 + 3
        stayers = devices[:5]
        await wait_for(lambda: all(seqs(d, group)[-1:] == [head] for d in stayers), 60)
        await asyncio.sleep(0.5)
        for d in stayers[:4]:
            assert seqs(d, group) == list(range(1, head + 1)), d.user
        assert seqs(devices[4], group)[0] > 60 and seqs(devices[4], group) == list(
            range(seqs(devices[4], group)[0], head + 1))
        for d in devices[5:]:  # added at the crossing, kicked later: a contiguous span
            got = seqs(d, group)
            assert got == list(range(got[0], got[-1] + 1)) and got[-1] < head
        assert proxy.cuts == 2
        for d in devices:
            await d.stop()
    finally:
        await proxy.stop()
        server.stop()


def test_ten_thousand_members_all_online(tmp_path: Path) -> None:
    """DESIGN's hardest case at full size: 10,000 members online (real SDK
    clients in 4 worker processes), 20 messages from 5 senders: every device
    gets every message exactly once, in seq order (bench group W2 reports the
    latencies; this asserts only correctness)."""
    import json
    import subprocess
    import sys

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = ServerProcess(data_dir)
    server.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "chatplane.cli", "bench", "group", "--url", server.url,
             "--data-dir", str(data_dir), "--members", "10000", "--senders", "5",
             "--messages", "20", "--interval-ms", "100", "--procs", "4", "--deadline", "240",
             "--json", str(tmp_path / "w2.json")],
            capture_output=True, text=True, timeout=420)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        report = json.loads((tmp_path / "w2.json").read_text())
        assert report["members"] == 10000 and report["members_not_clean"] == 0
        assert report["missing_messages"] == 0
    finally:
        server.stop()
