"""Three real `chatplane up` regions on loopback, eu, us and ap (each its own process and
SQLite store, a full mesh of peers, every link through a proxy that can cut it), driven
through the SDK and judged by the delivery checker (docs/architecture.md, "Regions"):
1:1 chats homed in each region, a group with members in all three, every user with a
device in every region, all sending while one link is cut and healed; every device gets
every message once and in one order, and the three stores hold the same message at
every seq."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatplane.checker import DeliveryChecker
from tests.support.regions import RegionProcess, region_device, wait_for
from tests.support.three_regions import (
    NAMES,
    Mesh,
    caught_up,
    inboxes_of,
    messages_of,
    report,
    three_regions,
)
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow

NO_CONSENT = {"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}  # members are added, not invited
USERS = {"alice": "eu", "bob": "us", "carol": "ap"}  # each user's first login: its home
# the 1:1 chats and the region whose device sends first in each: its home
CHATS = (("alice", "bob", "eu"), ("bob", "carol", "us"), ("carol", "alice", "ap"))


def _metric(region: RegionProcess, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200
    line = next((x for x in text.splitlines() if x.startswith(f"{name} ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def _placed(region: RegionProcess, users: int) -> bool:
    return _metric(region, "chatplane_region_user_homes_placed_total") >= users


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with three_regions(tmp_path, NO_CONSENT) as linked:
        await linked.all_see_each_other()
        yield linked


async def _devices(mesh: Mesh, checker: DeliveryChecker) -> dict[tuple[str, str], Device]:
    """Every user's device in every region (`(user, region)`), each user's home placed
    first where its first login is."""
    devices: dict[tuple[str, str], Device] = {}
    for user, home in USERS.items():
        devices[(user, home)] = await region_device(mesh.regions[home], user, f"{user}-{home}",
                                                    checker, defer=True, timeout_s=30)
        region = mesh.regions[home]
        placed = sum(1 for h in USERS.values() if h == home)
        await asyncio.to_thread(wait_for, functools.partial(_placed, region, placed), 20,
                                f"{user} homed in {home}")
    for user in USERS:
        for name in NAMES:
            if (user, name) not in devices:
                devices[(user, name)] = await region_device(
                    mesh.regions[name], user, f"{user}-{name}", checker, defer=True, timeout_s=30)
    return devices


async def test_three_regions_deliver_every_message_once_in_one_order_through_a_cut(
        mesh: Mesh) -> None:
    """alice homed in eu, bob in us, carol in ap, each with a device in every region; a
    1:1 chat homed in each region and a group homed in us with all three (and members
    with no device); every device sends into its chats and the group while the eu-us link
    is cut and healed. The checker is clean, every device holds one order per
    conversation, and once caught up the three stores are equal seq for seq."""
    checker = DeliveryChecker()
    devices = await _devices(mesh, checker)
    try:
        chats: dict[tuple[str, str], str] = {}
        for first, other, home in CHATS:
            chat = await devices[(first, home)].client.direct(other)
            await send_many(devices[(first, home)], chat, 1, f"home-{home}")  # homes it there
            chats[(first, other)] = chat
            checker.add_member(chat, first)
            checker.add_member(chat, other)
        group = await devices[("bob", "us")].client.create_group(
            "everyone", ["alice", "carol", "dan", "erin"])  # homed in us
        for user in (*USERS, "dan", "erin"):
            checker.add_member(group, user)
        everyone = list(devices.values())
        await wait_until_received(everyone, 3, 60)  # two chats' first sends and the group

        paced_sends = 8

        async def paced(device: Device, conversation: str) -> None:
            for i in range(paced_sends):
                await send_many(device, conversation, 1, f"{device.device}-{conversation}-{i}")
                await asyncio.sleep(0.15)

        sends = [paced(device, chat) for (user, _), device in devices.items()
                 for members, chat in chats.items() if user in members]
        sends += [paced(device, group) for device in everyone]
        traffic = asyncio.gather(*sends)
        await asyncio.sleep(0.6)
        # eu and us still reach ap: no home moves (no failover here)
        assert mesh.cut("eu", "us") >= 2  # at least each one's replication stream
        await asyncio.sleep(1.5)
        mesh.heal()
        assert not traffic.done()  # the cut fell in the middle of the traffic
        await asyncio.wait_for(traffic, 180)

        in_chat = 1 + 2 * len(NAMES) * paced_sends
        in_group = 1 + len(USERS) * len(NAMES) * paced_sends
        try:
            await wait_until_received(everyone, 2 * in_chat + in_group, 90)
        except AssertionError:
            for device in everyone:
                print(device.device, {c: len(device.order(c)) for c in (*chats.values(), group)})
            print(report(mesh))
            raise
        for device in everyone:
            device.judge()
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary()
        assert verdict.acked == len(CHATS) * in_chat + in_group - 1, verdict.summary()
        for conversation in (*chats.values(), group):
            orders = {tuple(d.order(conversation)) for d in everyone if d.order(conversation)}
            assert len(orders) == 1, conversation  # one order on every device, everywhere
        await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 60, "every log applied")
        held = {name: messages_of(region) for name, region in mesh.regions.items()}
        for conversation in (*chats.values(), group):
            eu, us, ap = (held[name].get(conversation) for name in NAMES)
            assert eu == us == ap, conversation
            assert eu is not None and [seq for seq, _ in eu] == list(range(1, len(eu) + 1))
        assert len(held["eu"][group]) == in_group
        for name in ("eu", "ap"):  # us homes the group and bob's chat with carol
            assert _metric(mesh.regions[name], "chatplane_region_homes_placed_total") >= 1
        assert _metric(mesh.regions["us"], "chatplane_region_homes_placed_total") >= 1
    finally:
        for device in devices.values():
            await device.stop()


IN_FLIGHT = 4  # sends of one device not acked yet, at most (its cids in order)


async def _pipelined(device: Device, group: str, stop: asyncio.Event,
                     sends: list[tuple[str, float, float]]) -> None:
    """Sends into `group` until `stop`, IN_FLIGHT at a time, each acked one recorded
    with its cid (the checker checks that the seqs rise with the cids) and as
    (device, started, acked) in `sends`."""
    async def lane() -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            ack = await device.client.send_text(group, f"{device.device}-{i}")
            sends.append((device.device, started, time.monotonic()))
            device.checker.record_ack(device.user, device.device, ack.conversation_id,
                                      ack.seq, ack.message_id, cid=ack.cid)
            i += 1
            await asyncio.sleep(0.02)

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))


async def _until_each_acked(devices: list[Device], sends: list[tuple[str, float, float]],
                            since: float, count: int, timeout_s: float, what: str) -> None:
    """Until each device had `count` sends acked that it started at `since` or later."""
    deadline = time.monotonic() + timeout_s
    while short := {d.device: n for d in devices if (n := sum(
            1 for x, sent, _ in sends if x == d.device and sent >= since)) < count}:
        assert time.monotonic() < deadline, f"{what}, within {timeout_s} s: {short} acked"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("links", [(("us", "ap"),), (("eu", "ap"),), (("us", "eu"), ("us", "ap"))],
                         ids=["home-link", "other-link", "home-alone"])
async def test_three_regions_sending_into_one_group_at_once_one_order_through_a_cut(
        mesh: Mesh, links: tuple[tuple[str, str], ...]) -> None:
    """alice homed in eu, bob in us, carol in ap, each with a device in every region; a
    group of the three homed in us (bob creates it there). All nine devices send into it
    at once, each with IN_FLIGHT sends in flight under its own cids, while one link is
    cut mid-traffic and healed: us-ap, the home's (ap's sends forwarded to us are
    refused and resent, ap applies us's log after the heal, us's acks are confirmed by
    eu alone), or eu-ap (carol's inbox entries, written by ap, reach eu only after the
    heal, and alice's reach ap so), or both of us's (the home alone: the sends it
    sequences wait for a confirmation until the heal, the others' are resent). One
    order everywhere: the checker clean (no loss, duplicate, gap or reorder on any
    device, each device's seqs rising with its cids), every device holding the same
    order, and the three stores the same message at every seq, 1 to the last, and the
    same inbox entries for each user."""
    checker = DeliveryChecker()
    devices = await _devices(mesh, checker)
    try:
        group = await devices[("bob", "us")].client.create_group("at-once", ["alice", "carol"])
        for user in USERS:
            checker.add_member(group, user)
        everyone = list(devices.values())
        await wait_until_received(everyone, 1, 30)  # the group's creation
        stop = asyncio.Event()
        sends: list[tuple[str, float, float]] = []
        traffic = asyncio.gather(*(_pipelined(d, group, stop, sends) for d in everyone))
        began = time.monotonic()
        # every device's sends acked, from all three regions at once, then the cut
        await _until_each_acked(everyone, sends, began, 3, 30, "before the cut")
        cut_at = time.monotonic()
        for link in links:
            assert mesh.cut(*link) >= 2  # at least each side's replication stream
        await asyncio.sleep(2.0)  # below the sync timeout (3 s): acks wait, or are resent
        mesh.heal()
        healed_at = time.monotonic()
        try:  # and every device's sends acked again, started after the heal
            await _until_each_acked(everyone, sends, healed_at, 3, 30, "after the heal")
        except AssertionError:
            print(report(mesh))
            raise
        stop.set()
        assert not traffic.done()
        await asyncio.wait_for(traffic, 60)
        across = sum(1 for _, sent, acked in sends if sent < healed_at and acked > cut_at)
        assert across > 10, across  # the cut fell in the middle of the traffic

        total = 1 + len(sends)
        try:
            await wait_until_received(everyone, total, 60)
        except AssertionError:
            print(report(mesh))
            raise
        await asyncio.sleep(0.5)  # a second copy of anything would come now
        for device in everyone:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == len(sends) and verdict.ok, verdict.summary()  # all but the creation
        orders = {tuple(d.order(group)) for d in everyone}
        assert len(orders) == 1  # one order on every device, in every region
        order = orders.pop()
        await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 60, "every log applied")
        held = {name: messages_of(region).get(group) for name, region in mesh.regions.items()}
        for name, rows in held.items():  # no gap, no second message at a seq, in any store
            assert rows is not None and [seq for seq, _ in rows] == list(range(1, total + 1)), name
            assert tuple(message for _, message in rows) == order, name
        inboxes = {name: inboxes_of(region, list(USERS)) for name, region in mesh.regions.items()}
        assert inboxes["eu"] == inboxes["us"] == inboxes["ap"]
        for user, inbox in inboxes["eu"].items():
            assert [s for _, c, s in inbox if c == group] == list(range(1, total + 1)), user
        resent = sum(d.client.send_retries for d in everyone)
        cut = " and ".join(f"{a}-{b}" for a, b in links)
        print(f"\none group, {len(everyone)} devices in three regions, {cut} cut:"
              f" {total} messages ({across} in flight across the cut), {resent} resends")
    finally:
        for device in devices.values():
            await device.stop()


DETECT_S = 3.0  # CHATPLANE_FAILOVER_AFTER_S here (default 5 s)
FAILOVER = {**NO_CONSENT, "CHATPLANE_REGION_DURABILITY": "sync",
            "CHATPLANE_FAILOVER_AFTER_S": str(DETECT_S), "CHATPLANE_REGION_SYNC_TIMEOUT_S": "1"}


def _failover(region: RegionProcess) -> dict[str, object]:
    status, text = region.get("/v1/peers")
    assert status == 200, text
    report: dict[str, object] = json.loads(text)["failover"]
    return report


async def test_kill_of_a_home_region_with_two_survivors_the_one_holding_most_takes_over(
        tmp_path: Path) -> None:
    """eu homes three 1:1 chats and a group (and its users); their devices are in all
    three regions (eu's with every region's URL), all sending in `sync`. The us-eu link
    is cut, so eu's acks are confirmed by ap alone and us falls behind on eu's log
    (us, which no longer hears eu, asks to take eu over: ap, which still hears it,
    refuses the fence); then eu is killed with -9. ap, which holds the most of eu's
    log, takes eu over (the witness grants once), after logging again what us lacks;
    us does not. The clients move, sends are acked again, the checker is clean (nothing
    acked lost, no seq naming two messages); eu restarted converges with both and
    sequences none of the chats it lost."""
    async with three_regions(tmp_path, FAILOVER, witness=True) as mesh:
        await mesh.all_see_each_other()
        eu, us, ap = (mesh.regions[name] for name in NAMES)
        urls = [eu.url, us.url, ap.url]
        checker = DeliveryChecker()
        devices: list[Device] = []
        sending: list[tuple[Device, list[str]]] = []
        try:
            movers = []
            for i in range(3):  # p_i's home is eu (first login there), q_i's is ap
                movers.append(await region_device(urls, f"p{i}", "mover", checker,
                                                  defer=True, timeout_s=30))
            await asyncio.to_thread(wait_for, functools.partial(_placed, eu, 3), 20,
                                    "p0-p2 homed in eu")
            devices += movers
            chats = []
            for i, mover in enumerate(movers):
                chat = await mover.client.direct(f"q{i}")
                await send_many(mover, chat, 1, "home")  # homes the chat in eu
                chats.append(chat)
                checker.add_member(chat, f"p{i}")
                checker.add_member(chat, f"q{i}")
            group = await movers[0].client.create_group(
                "eu-group", ["p1", "p2", "q0", "q1", "q2"])  # homed in eu
            for user in ("p0", "p1", "p2", "q0", "q1", "q2"):
                checker.add_member(group, user)
            for i in range(3):
                for where in (ap, us):
                    device = await region_device(where, f"q{i}", f"q{i}-{where.name}", checker,
                                                 defer=True, timeout_s=30)
                    devices.append(device)
                    sending.append((device, [chats[i], group]))
                sending.append((movers[i], [chats[i], group]))
            await wait_until_received(devices, 2, 60)  # its chat's first send and the group
            stop = asyncio.Event()

            async def send(device: Device, conversations: list[str]) -> None:
                i = 0
                while not stop.is_set():
                    conversation = conversations[i % len(conversations)]
                    await send_many(device, conversation, 1, f"{device.device}-{i}")
                    i += 1
                    await asyncio.sleep(0.1)

            traffic = [asyncio.ensure_future(send(d, c)) for d, c in sending]
            await asyncio.sleep(1.5)
            mesh.cut("us", "eu")  # eu's sync acks now need ap's confirmation
            await asyncio.sleep(DETECT_S + 1.5)  # us asks for eu; ap still hears it
            assert not _failover(us)["lost"] and not _failover(ap)["lost"]
            assert "refused the fence" in str(_failover(us)["last_not_taken"]), _failover(us)
            acked_at_kill = checker.verdict().acked
            assert mesh.witness is not None
            grants_before = len(mesh.witness.granted())  # (a region slow to start may be taken over)
            eu.kill()
            await asyncio.to_thread(wait_for, lambda: _failover(ap)["lost"] == ["eu"],
                                    DETECT_S + 15, "ap takes eu over")
            await asyncio.to_thread(wait_for, lambda: _failover(us)["taken_by_others"]
                                    == {"eu": "ap"}, 10, "us is told ap took eu over")
            assert not _failover(us)["lost"] or _failover(us)["lost"] == ["eu"]
            grants = mesh.witness.granted()[grants_before:]  # one grant, to ap
            assert len(grants) == 1 and "granted ap the takeover of eu" in grants[0], grants
            await asyncio.sleep(4.0)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*traffic), 90)
            mesh.heal()
            await asyncio.to_thread(eu.start)  # on its store: it lost its homes
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 60, "every log applied")
            late = await region_device(eu, "p0", "late-eu", checker, defer=True, timeout_s=30)
            devices.append(late)
            await send_many(late, chats[0], 2, "late")  # forwarded to ap, not sequenced in eu
            await asyncio.to_thread(wait_for, lambda: caught_up(mesh), 60, "every log applied")
            await asyncio.sleep(1.0)
            for device in devices:
                device.judge()
            verdict = checker.verdict()
            assert verdict.ok, verdict.summary()
            assert verdict.acked > acked_at_kill + 30, (acked_at_kill, verdict.summary())
            held = {name: messages_of(region) for name, region in mesh.regions.items()}
            for conversation in (*chats, group):
                assert held["eu"].get(conversation) == held["us"].get(conversation) == \
                    held["ap"].get(conversation), conversation
            assert _metric(eu, "chatplane_region_sends_forwarded_total") >= 2
            print(f"\nthree-region failover: {verdict.acked} acked ({acked_at_kill} before the"
                  f" kill); ap: {_failover(ap)['takeovers']}")
            for region in (us, ap):
                print("\n".join(f"{region.name} | {line}" for line in region.output
                                if "takeover" in line or "took over" in line
                                or "fence" in line))
        except BaseException:
            print(report(mesh))
            raise
        finally:
            for device in devices:
                await device.stop()
