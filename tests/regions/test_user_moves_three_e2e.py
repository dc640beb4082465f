"""Admin moves of a user's home with three regions (docs/architecture.md, "Moving a
user's home"): real `chatplane up` regions eu, us and ap, each with its own SQLite
store, the SDK and the delivery checker. The third region (neither the old home nor the
new) must hold every inbox entry the old home wrote before the user's row moves, since
the old home's log then serves it the user's entries no more: the old home answers the
hand-off only once it applied its log to the head, as for a chat's move."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chatplane.checker import DeliveryChecker
from tests.support.regions import metric, move_user_home, region_device, wait_for
from tests.support.three_regions import caught_up, inboxes_of, report, three_regions
from tests.support.traffic import Device, send_many

pytestmark = pytest.mark.slow


async def _paced_until(device: Device, conversation: str, stop: asyncio.Event,
                       pause_s: float) -> int:
    """Two sends in flight at once, acked, then a pause, until `stop` is set; returns
    how many."""
    sent = 0
    while not stop.is_set():
        await send_many(device, conversation, 2, f"{device.device}-{sent}")
        sent += 2
        await asyncio.sleep(pause_s)
    return sent


async def _received(expected: dict[Device, int], timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(len(device.received) < count for device, count in expected.items()):
        if loop.time() > deadline:
            raise AssertionError("timed out: received " + ", ".join(
                f"{d.user}/{d.device}={len(d.received)} of {n}" for d, n in expected.items()))
        await asyncio.sleep(0.05)


def _inbox_map(device: Device) -> dict[int, tuple[str, int]]:
    return {m.inbox_seq: (m.conversation_id, m.seq) for m in device.received if m.inbox_seq}


async def test_a_users_home_moves_among_three_regions_under_traffic(tmp_path: Path) -> None:
    """alice is homed in eu (her first login), with a device in each region; dave (eu),
    bob (us) and carol (ap) write to her all along, each in a chat homed in his region.
    With ap cut from eu's log, the call on us to take alice is refused (503: ap did not
    apply eu's log); healed, her home moves to us, then to ap, then back to eu under
    traffic. Every device gets every message once and in order, alice's inbox holds each
    message once at one inbox_seq, 1..n, on her three devices and in the three stores."""
    async with three_regions(tmp_path) as mesh:
        await mesh.all_see_each_other()
        eu, us, ap = (mesh.regions[name] for name in ("eu", "us", "ap"))
        checker = DeliveryChecker()
        devices: list[Device] = []
        stop = asyncio.Event()
        sending: asyncio.Future[list[int]] | None = None
        try:
            alice = {}
            alice["eu"] = await region_device(eu, "alice", "a-eu", checker, timeout_s=30)
            devices.append(alice["eu"])
            await asyncio.to_thread(wait_for, lambda: metric(
                eu, "chatplane_region_user_homes_placed_total") >= 1, 20, "alice homed in eu")
            senders = {}
            for region, user in ((eu, "dave"), (us, "bob"), (ap, "carol")):
                senders[user] = await region_device(region, user, user[0], checker,
                                                    timeout_s=30)
                devices.append(senders[user])
            for region in (us, ap):
                alice[region.name] = await region_device(region, "alice",
                                                         f"a-{region.name}", checker,
                                                         timeout_s=30)
                devices.append(alice[region.name])
            chats = {}
            for user, device in senders.items():
                chats[user] = await device.client.direct("alice")
                checker.add_member(chats[user], "alice")
                checker.add_member(chats[user], user)
                await send_many(device, chats[user], 1, "first")  # homed in its region
            await _received({d: 3 for d in alice.values()}, 30)
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")

            # ap cut from eu's log: eu would stop serving it alice's entries once moved
            mesh.links[("ap", "eu")].block()
            await send_many(senders["dave"], chats["dave"], 3, "ap-behind")
            status, refused = await asyncio.to_thread(move_user_home, us, "alice", "us")
            assert status == 503 and "region ap did not apply" in refused["error"], refused
            mesh.heal()
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")

            sending = asyncio.gather(*(_paced_until(device, chats[user], stop, 0.05)
                                       for user, device in senders.items()))
            for epoch, (to, old) in enumerate(((us, eu), (ap, us), (eu, ap)), start=2):
                await asyncio.sleep(0.5)
                status, moved = await asyncio.to_thread(move_user_home, to, "alice", to.name)
                assert status == 200, (moved, report(mesh))
                assert (moved["home"], moved["epoch"], moved["moved_from"]) == (
                    to.name, epoch, old.name), moved
            await asyncio.sleep(0.5)  # some sends after the last move, then they stop
            stop.set()
            sent = dict(zip(senders, await asyncio.wait_for(sending, 60), strict=True))

            total = 3 + 3 + sum(sent.values())  # everything alice receives
            try:
                await _received({**{d: total for d in alice.values()},
                                 **{senders[u]: 1 + sent[u] + (3 if u == "dave" else 0)
                                    for u in senders}}, 30)
            except AssertionError:
                print(report(mesh))
                raise
            await asyncio.sleep(0.5)  # anything delivered twice would come now
            for device in devices:
                device.judge()
            verdict = checker.verdict()
            assert verdict.acked == total and verdict.ok, verdict.summary()
            # alice's inbox: each message once, at one inbox_seq, 1..n, on her devices
            maps = [_inbox_map(device) for device in alice.values()]
            assert maps[0] == maps[1] == maps[2]
            assert sorted(maps[0]) == list(range(1, total + 1))
            assert len(set(maps[0].values())) == total
            # and the same in the three stores
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 30, "every log applied")
            held = [inboxes_of(region, ["alice"])["alice"] for region in (eu, us, ap)]
            assert [n for n, _, _ in held[0]] == list(range(1, total + 1)), report(mesh)
            assert held[0] == held[1] == held[2]
            assert sorted((c, s) for _, c, s in held[0]) == sorted(maps[0].values())
        finally:
            stop.set()
            if sending is not None:
                await asyncio.gather(sending, return_exceptions=True)
            for device in devices:
                await device.stop()
