"""1:1 chat end to end against a real `chatplane up` process: exactly once, in
seq order, the same order on every device, through abrupt connection cuts."""

from __future__ import annotations

import asyncio

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from tests.support.proxy import ChaosProxy
from tests.support.server import ServerProcess
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow


async def open_devices(url: str, signer: TokenSigner, checker: DeliveryChecker,
                       names: list[tuple[str, str]], transport: str = "ws") -> list[Device]:
    devices = []
    for user, device in names:
        client = Client(url, signer.mint(user, device), transport=transport)
        await client.connect()
        d = Device(client, user, device, checker)
        d.start()
        devices.append(d)
    return devices


async def test_500_each_way_through_five_cuts(
    proxied_server: tuple[ServerProcess, ChaosProxy], signer: TokenSigner
) -> None:
    server, proxy = proxied_server
    checker = DeliveryChecker()
    alice, alice_tablet, bob, bob_laptop = await open_devices(
        server.url, signer, checker,
        [("alice", "phone"), ("alice", "tablet"), ("bob", "phone"), ("bob", "laptop")])
    conv = await alice.client.direct("bob")
    assert conv == await bob.client.direct("alice")
    checker.add_member(conv, "alice")
    checker.add_member(conv, "bob")

    async def cutter() -> None:
        for _ in range(5):
            await asyncio.sleep(0.4)
            # on a busy machine every device may still be reconnecting 0.4 s after
            # the last cut: wait for one to be back, so each cut resets connections
            async with asyncio.timeout(10):
                while not proxy.connections:
                    await asyncio.sleep(0.01)
            assert proxy.cut_all() > 0

    _, alice_seqs, bob_seqs = await asyncio.gather(
        cutter(), send_many(alice, conv, 500, "a"), send_many(bob, conv, 500, "b"))
    everyone = [alice, alice_tablet, bob, bob_laptop]
    await wait_until_received(everyone, 1000, timeout_s=60)
    await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now

    assert proxy.cuts == 5
    # every cut found connections to reset, and every device came back each time
    # it was connected (a device still away at the next cut is not cut twice)
    assert all(d.client.reconnects >= 1 for d in everyone)
    assert sum(d.client.reconnects for d in everyone) >= 5
    assert sorted(alice_seqs + bob_seqs) == list(range(1, 1001))
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary() + str(verdict.to_dict()["failed_devices"])
    orders = {tuple(d.order(conv)) for d in everyone}
    assert len(orders) == 1 and len(next(iter(orders))) == 1000
    # the sender's other device has the sender's own messages
    assert {m.text for m in alice_tablet.received if m.sender == "alice"} == {
        f"a-{i}" for i in range(500)}
    for d in everyone:
        await d.stop()


async def test_kill_9_and_restart_loses_nothing_acked(server: ServerProcess,
                                                      signer: TokenSigner) -> None:
    checker = DeliveryChecker()
    alice, bob = await open_devices(server.url, signer, checker,
                                    [("alice", "phone"), ("bob", "phone")], transport="tcp")
    conv = await alice.client.direct("bob")
    checker.add_member(conv, "alice")
    checker.add_member(conv, "bob")

    async def killer() -> None:
        while len(checker.acks_by_sender) == 0 or checker.acks_by_sender["alice"] < 150:
            await asyncio.sleep(0.01)
        server.kill()
        await asyncio.sleep(0.5)
        server.start()

    _, seqs = await asyncio.gather(killer(), send_many(alice, conv, 400, "k", in_flight=20))
    await wait_until_received([alice, bob], 400, timeout_s=60)
    await asyncio.sleep(0.3)

    assert sorted(seqs) == list(range(1, 401)), "seqs repeat or skip across the kill"
    assert alice.client.reconnects >= 1 and bob.client.reconnects >= 1
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary() + str(verdict.to_dict()["failed_devices"])
    history = await bob.client.history(conv, limit=200)
    older = await bob.client.history(conv, before_seq=history[0].seq, limit=200)
    assert [m.seq for m in older + history] == list(range(1, 401))
    for d in (alice, bob):
        await d.stop()


async def test_sync_after_offline_and_roaming_history(server: ServerProcess,
                                                      signer: TokenSigner) -> None:
    """A device that was offline gets the delta on connect; a new device pulls
    any history page by page."""
    checker = DeliveryChecker()
    (alice,) = await open_devices(server.url, signer, checker, [("alice", "phone")])
    conv = await alice.client.direct("carol")
    checker.add_member(conv, "alice")
    checker.add_member(conv, "carol")
    await send_many(alice, conv, 120, "offline")
    (carol,) = await open_devices(server.url, signer, checker, [("carol", "phone")])
    await wait_until_received([alice, carol], 120, timeout_s=30)
    assert [m.seq for m in carol.received] == list(range(1, 121))

    resumed = Client(server.url, signer.mint("carol", "phone"), inbox_seq=carol.client.inbox_seq)
    await carol.stop()
    await send_many(alice, conv, 3, "later")
    await resumed.connect()
    got = []
    async for m in resumed.messages():
        got.append(m.seq)
        if len(got) == 3:
            break
    assert got == [121, 122, 123]  # the resumed device gets only what it lacked
    page = await resumed.history(conv, before_seq=50, limit=10)
    assert [m.seq for m in page] == list(range(40, 50))
    forward = await resumed.history(conv, after_seq=100, limit=5)
    assert [m.seq for m in forward] == list(range(101, 106))
    await resumed.close()
    await alice.stop()
