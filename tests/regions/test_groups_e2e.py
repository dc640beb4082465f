"""Groups across two real `chatplane up` regions on loopback, each with its own SQLite
store, driven through the SDK and judged by the delivery checker: a group is homed in
the region that creates it; sends and membership changes made in the other region are
forwarded there, sequenced once, and replicated back, so members' devices in both
regions receive every message exactly once and in one order, and a change made in one
region (a kick, a dissolve) binds sends in the other."""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.protocol.errors import ErrorCode, RequestError
from tests.support.regions import SHARED_KEY, RegionProcess, metric, region_device, two_regions, wait_for
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow

signer = TokenSigner(SHARED_KEY)
NO_CONSENT = {"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}  # members are added, not invited


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[RegionProcess, RegionProcess]]:
    with two_regions(tmp_path, NO_CONSENT) as (eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(lambda r, p: r.peers()[p]["ok"], me, other.name), 20,
                     f"{me.name} sees {other.name}")
        yield eu, us


# receipts judged at the end: a group's creation arrives before the test knows its id
_device = functools.partial(region_device, defer=True)


async def _stop_all(devices: list[Device]) -> None:
    for device in devices:
        await device.stop()


def _admin_post(region: RegionProcess, path: str, body: dict[str, object]) -> tuple[int, str]:
    request = urllib.request.Request(
        region.admin_url + path, method="POST", data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {region.admin_secret}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _refused(coroutine: object) -> RequestError:
    try:
        await coroutine  # type: ignore[misc]
    except RequestError as exc:
        return exc
    raise AssertionError("the request went through")


async def test_two_groups_sent_to_from_both_regions_once_and_in_one_order(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """One group made in eu, one in us, the same four users in each (alice with a device
    in both regions): every device sends into both groups at once; each group has one
    order on every device in both regions, and each region's store the same timeline."""
    devices = await _two_groups(*regions)
    assert all(m.inbox_seq for d in devices for m in d.received)  # write diffusion


async def test_large_groups_sent_to_from_both_regions_once_and_in_one_order(
    tmp_path: Path,
) -> None:
    """The same with both groups over the large-group threshold (read diffusion: no
    inbox entries, the members online in each region are pushed each message)."""
    with two_regions(tmp_path, {**NO_CONSENT, "CHATPLANE_LARGE_GROUP_THRESHOLD": "2"}) as (
            eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(lambda r, p: r.peers()[p]["ok"], me, other.name), 20,
                     f"{me.name} sees {other.name}")
        devices = await _two_groups(eu, us)
        # they came as pushes of the group, not as inbox entries, in both regions
        assert all(not m.inbox_seq for d in devices for m in d.received if m.content_type == "text")


async def _two_groups(eu: RegionProcess, us: RegionProcess) -> list[Device]:
    checker = DeliveryChecker()
    devices = [await _device(eu, "alice", "a-eu", checker),
               await _device(eu, "carol", "c-eu", checker),
               await _device(us, "alice", "a-us", checker),
               await _device(us, "bob", "b-us", checker),
               await _device(us, "dave", "d-us", checker)]
    a_eu, c_eu, a_us, b_us, d_us = devices
    try:
        homed_eu = await a_eu.client.create_group("eu's", ["bob", "carol", "dave"])
        homed_us = await b_us.client.create_group("us's", ["alice", "carol", "dave"])
        for group in (homed_eu, homed_us):
            for user in ("alice", "bob", "carol", "dave"):
                checker.add_member(group, user)
        # both creations reach every device (replicated to the other region first)
        await wait_until_received(devices, 2, 20)
        counts = {a_eu: 25, c_eu: 25, a_us: 15, b_us: 25, d_us: 25}
        await asyncio.wait_for(asyncio.gather(*(
            send_many(device, group, count, f"{device.device}-{group[-4:]}")
            for device, count in counts.items() for group in (homed_eu, homed_us))), 60)
        sent = sum(counts.values())
        await wait_until_received(devices, 2 + 2 * sent, 30)
        for device in devices:
            device.judge()
        verdict = checker.verdict()
        assert verdict.acked == 2 * sent and verdict.ok, verdict.summary()
        for group in (homed_eu, homed_us):
            orders = {tuple(d.order(group)) for d in devices}
            assert len(orders) == 1, group  # one order on every device, in both regions
            order = list(orders.pop())
            for device in (a_eu, b_us):  # each region's own store: the same timeline
                history = await device.client.history(group, limit=200)
                assert [m.seq for m in history] == list(range(1, sent + 2))
                assert [m.message_id for m in history] == order
        # each region forwarded its devices' sends into the other's group, nothing else
        from_us = counts[a_us] + counts[b_us] + counts[d_us]
        assert metric(us, "chatplane_region_sends_forwarded_total") == from_us
        assert metric(eu, "chatplane_region_sends_served_total") == from_us
        assert metric(eu, "chatplane_region_sends_forwarded_total") == sent - from_us
        assert metric(eu, "chatplane_region_homes_placed_total") == 1
        assert metric(us, "chatplane_region_homes_placed_total") == 1
        return devices
    finally:
        await _stop_all(devices)


async def test_changes_made_in_the_other_region_bind_the_home(
    regions: tuple[RegionProcess, RegionProcess],
) -> None:
    """A group homed in eu: bob, an admin connected in us, kicks carol (connected in eu)
    and dave (in us), renames it and adds erin; each change is forwarded to eu, and the
    kicked members' sends are refused in both regions. us's admin API removes erin (also
    through eu); then alice dissolves it from her device in us, and nobody can send any
    more. The member lists agree everywhere."""
    eu, us = regions
    checker = DeliveryChecker()
    devices = [await _device(eu, "alice", "a-eu", checker),
               await _device(eu, "carol", "c-eu", checker),
               await _device(us, "alice", "a-us", checker),
               await _device(us, "bob", "b-us", checker),
               await _device(us, "dave", "d-us", checker)]
    a_eu, c_eu, a_us, b_us, d_us = devices
    try:
        group = await a_eu.client.create_group("g", ["bob", "carol", "dave"])
        await wait_until_received(devices, 1, 20)
        await a_eu.client.set_role(group, "bob", "admin")
        await wait_until_received([b_us, d_us], 2, 20)  # us knows bob is an admin
        # a plain member's kick, made in us, is refused by the home's role check
        refused = await _refused(d_us.client.kick(group, "bob"))
        assert refused.code == ErrorCode.FORBIDDEN and "may not kick" in refused.message, refused
        # made in us, forwarded to eu: the seqs are eu's
        kicked_carol = await b_us.client.kick(group, "carol")
        assert kicked_carol == 3
        # carol, connected to the home, is refused there at once
        refused = await _refused(c_eu.client.send_text(group, "still here?"))
        assert refused.code == ErrorCode.FORBIDDEN, refused
        assert await b_us.client.kick(group, "dave") == 4
        # dave, in us, is refused (by us's replicated list, or by eu if us lags)
        refused = await _refused(d_us.client.send_text(group, "me too?"))
        assert refused.code == ErrorCode.FORBIDDEN, refused
        assert await b_us.client.rename_group(group, "renamed") == 5
        assert await b_us.client.add_members(group, ["erin"]) == 6
        ack = await a_us.client.send_text(group, "after the changes")
        assert ack.seq == 7
        await wait_until_received([a_eu, a_us, b_us], 7, 20)

        def members(region: RegionProcess) -> list[tuple[str, str]]:
            request = urllib.request.Request(
                f"{region.admin_url}/v1/admin/groups/{group}/members",
                headers={"Authorization": f"Bearer {region.admin_secret}"})
            with urllib.request.urlopen(request, timeout=5) as reply:
                return [(m["user_id"], m["role"]) for m in json.loads(reply.read())["members"]]

        expected = [("alice", "owner"), ("bob", "admin"), ("erin", "member")]
        assert members(eu) == expected
        assert wait_for(lambda: members(us) == expected and expected, 10, "us's members")
        names = {(await d.client.conversations())[0].name for d in (a_eu, b_us)}
        assert names == {"renamed"}
        # the admin API of us changes it too, through eu
        status, text = await asyncio.to_thread(
            _admin_post, us, f"/v1/admin/groups/{group}/members", {"remove": ["erin"]})
        assert (status, json.loads(text)) == (200, {"seq": 8}), text
        assert members(eu) == expected[:2]
        assert wait_for(lambda: members(us) == expected[:2] and expected, 10, "us's members")

        assert await a_us.client.dissolve_group(group) == 9
        for device in (a_eu, b_us):
            refused = await _refused(device.client.send_text(group, "anyone?"))
            assert refused.code == ErrorCode.FORBIDDEN, refused
        assert metric(us, "chatplane_region_group_changes_forwarded_total") == 6
        assert metric(eu, "chatplane_region_group_changes_served_total") == 6
    finally:
        await _stop_all(devices)


async def _send_until_dead(device: Device, group: str, limit: int,
                           acked: dict[int, str]) -> None:
    """Sends one after the other until the home dies (a send with no ack in 3 s)."""
    for i in range(limit):
        try:
            ack = await asyncio.wait_for(device.client.send_text(group, f"t-{i}"), 3)
        except Exception:  # the region is gone: what was acked is what counts
            return
        device.checker.record_ack(device.user, device.device, ack.conversation_id, ack.seq,
                                  ack.message_id, cid=ack.cid)
        acked[ack.seq] = ack.message_id


async def _timeline(device: Device, group: str) -> dict[int, str]:
    """The group's whole timeline in the device's region's store, page by page."""
    stored: dict[int, str] = {}
    before = None  # newest page first, then older ones
    while True:
        page = await device.client.history(group, before_seq=before, limit=200)
        if not page:
            return stored
        stored.update((m.seq, m.message_id) for m in page)
        before = page[0].seq


async def test_sync_kill_minus_9_of_a_groups_home_loses_nothing_acked(tmp_path: Path) -> None:
    """A group homed in eu, members in both regions all sending (us's forwarded to eu):
    eu is killed with -9 under that traffic. In `sync` (the default) every acked group
    message is in us's store and reached us's devices, once and in order."""
    with two_regions(tmp_path, {**NO_CONSENT, "CHATPLANE_REGION_SYNC_TIMEOUT_S": "1"}) as (
            eu, us):
        for me, other in ((eu, us), (us, eu)):
            wait_for(functools.partial(lambda r, p: r.peers()[p]["ok"], me, other.name), 20,
                     f"{me.name} sees {other.name}")
        checker = DeliveryChecker()
        senders = [await _device(eu, f"a{i}", "d", DeliveryChecker()) for i in range(3)]
        readers = [await _device(us, f"b{i}", "d", checker) for i in range(3)]
        acked: dict[int, str] = {}
        try:
            group = await senders[0].client.create_group(
                "g", [d.user for d in senders[1:] + readers])
            for device in senders + readers:
                checker.add_member(group, device.user)
                device.checker = checker  # acks of eu's devices are judged; receipts not
            await wait_until_received(readers, 1, 20)
            traffic = [asyncio.ensure_future(_send_until_dead(d, group, limit, acked))
                       for devices, limit in ((senders, 400), (readers, 150)) for d in devices]
            await asyncio.sleep(1.5)
            eu.kill()  # kill -9 under traffic
            await asyncio.wait_for(asyncio.gather(*traffic), 15)
            assert len(acked) > 20, "too little traffic before the kill"
            print(f"\nsync: kill -9 of a group's home: acked={len(acked)}")
            stored = await _timeline(readers[0], group)  # us's own store
            assert {seq: stored.get(seq) for seq in acked} == acked
            assert sorted(stored) == list(range(1, len(stored) + 1))  # no hole
            await wait_until_received(readers, 1 + len(acked), 10)
            for device in readers:
                device.judge()
                device.checker.check_history(device.user, device.device, group,
                                             sorted(stored.items()))
            verdict = checker.verdict()
            assert verdict.ok, verdict.summary()
        finally:
            for device in senders + readers:
                await device.stop()
