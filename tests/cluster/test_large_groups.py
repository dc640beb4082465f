"""Large groups (read diffusion) on a real `cluster up`: the threshold is set
low so a few clients make a large group, spread over two gateways. Pushes
travel im -> state (DeliverGroup, the conversation's owner on the state
ring) -> gateways (GroupPush); a lost push is repaired by the gateways' head
check of large groups; a kill -9 of a gateway costs nothing but a resume."""

from __future__ import annotations

import asyncio
import functools

import pytest

from chatplane.checker import DeliveryChecker
from chatplane.client import Client
from chatplane.cluster import Cluster
from chatplane.registry.ring import HashRing
from tests.cluster.conftest import ClusterFactory, connect_spread, connections, metric
from tests.support.social import befriend
from tests.support.traffic import Device, send_many

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LARGE = {"CHATPLANE_LARGE_GROUP_THRESHOLD": "3"}


async def _online(cluster: Cluster, checker: DeliveryChecker, users: list[str],
                  devices_of: int = 1) -> list[Device]:
    made = []
    for i, user in enumerate(users):
        for name in ("phone", "tablet")[:devices_of]:
            # TCP devices take the group writer's path (gateway/bulk.py), WebSocket the loop's
            client = await connect_spread(cluster, functools.partial(
                Client, cluster.dispatch_url, cluster.signer.mint(user, name),
                transport=("ws", "tcp")[i % 2]))
            device = Device(client, user, name, checker, defer=True)
            device.start()
            made.append(device)
    return made


def _seqs(device: Device, group: str) -> list[int]:
    return [m.seq for m in device.received if m.conversation_id == group]


async def _until_all_have(devices: list[Device], group: str, head: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(len(_seqs(d, group)) < head for d in devices):
        if loop.time() > deadline:
            raise AssertionError("not delivered: " + ", ".join(
                f"{d.user}/{d.device}={len(_seqs(d, group))}" for d in devices))
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # a duplicate would arrive now


def _assert_clean(checker: DeliveryChecker, devices: list[Device]) -> None:
    for d in devices:
        d.judge()
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary() + str(verdict.to_dict()["failed_devices"])


async def _group(devices: list[Device], checker: DeliveryChecker, users: list[str]) -> str:
    await befriend(devices[0].client, [d.client for d in devices[1:]])
    group = await devices[0].client.create_group("big", users[1:])
    for user in users:
        checker.add_member(group, user)
    await _until_all_have(devices, group, 1, 30)  # the creation, from each inbox
    return group


async def _send_killing(cluster: Cluster, checker: DeliveryChecker, group: str,
                        senders: list[Device], after: int, victim: str) -> None:
    """40 messages from each sender, one at a time; kill -9 `victim` once
    `after` of them are acked."""
    acked = 0

    async def send(device: Device) -> None:
        nonlocal acked
        for i in range(40):
            ack = await device.client.send_text(group, f"{device.user}-{i}")
            checker.record_ack(device.user, device.device, group, ack.seq, ack.message_id)
            acked += 1

    async def killer() -> None:
        while acked < after:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(cluster.kill, victim)

    await asyncio.wait_for(asyncio.gather(killer(), *(send(d) for d in senders)), 90)


async def test_members_on_two_gateways_get_live_pushes(make_cluster: ClusterFactory) -> None:
    """The head check is off, and nobody reconnects: nothing but pushes tells a
    device of new messages (no inbox entries, no SyncHint)."""
    cluster = make_cluster(gateways=2, ims=2, states=2,
                           env={**LARGE, "CHATPLANE_HEAD_CHECK_S": "0"})
    checker = DeliveryChecker()
    users = [f"p{i}" for i in range(8)]
    devices = await _online(cluster, checker, users)
    assert connections(cluster, "gw-1") > 0 and connections(cluster, "gw-2") > 0
    group = await _group(devices, checker, users)
    await asyncio.gather(*(send_many(d, group, 20, d.user, in_flight=3) for d in devices[:3]))
    await _until_all_have(devices, group, 61, 30)
    _assert_clean(checker, devices)
    for d in devices:
        assert _seqs(d, group) == list(range(1, 62))
        assert d.client.reconnects == 0
    for gateway in ("gw-1", "gw-2"):
        assert metric(cluster, gateway, "chatplane_group_pushed_total") > 0
        assert metric(cluster, gateway, "chatplane_head_check_hints_total") == 0
    assert sum(metric(cluster, gw, "chatplane_group_writer_sockets_total")
               for gw in ("gw-1", "gw-2")) > 0
    for d in devices:
        await d.stop()


async def test_a_flush_lost_with_its_state_instance_is_repaired_by_the_head_check(
        make_cluster: ClusterFactory) -> None:
    """The group's state instance holds a message for its next flush (a busy
    group waits an interval after a flush, 10 s here) and is killed: the im's
    outbox had handed it over, so nobody retries it, and no later message
    reveals the gap. The gateways' head check of large groups must."""
    cluster = make_cluster(gateways=2, ims=1, states=1,
                           env={**LARGE, "CHATPLANE_GROUP_PUSH_INTERVAL_MS": "10000"})
    checker = DeliveryChecker()
    users = [f"l{i}" for i in range(6)]
    devices = await _online(cluster, checker, users)
    group = await _group(devices, checker, users)  # the creation: through the inboxes
    await send_many(devices[1], group, 1, "pushed")  # a quiet group: flushed at once
    await _until_all_have(devices, group, 2, 30)
    await send_many(devices[1], group, 1, "held")  # within the interval: held
    for _ in range(500):  # until the im handed it to state (a fresh cluster: 2 in all)
        if metric(cluster, "im-1", "chatplane_im_group_delivered_total") >= 2:
            break
        await asyncio.sleep(0.02)
    assert metric(cluster, "im-1", "chatplane_im_group_delivered_total") == 2
    assert all(_seqs(d, group) == [1, 2] for d in devices), "held, not pushed yet"
    cluster.kill("state-1")
    cluster.start_member("state-1")
    await _until_all_have(devices, group, 3, 30)
    _assert_clean(checker, devices)
    assert sum(metric(cluster, g, "chatplane_head_check_group_hints_total")
               for g in ("gw-1", "gw-2")) > 0
    for d in devices:
        await d.stop()


async def test_kill_9_of_a_gateway_under_large_group_traffic(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=2, states=1, env=LARGE)
    checker = DeliveryChecker()
    users = [f"k{i}" for i in range(6)]
    devices = await _online(cluster, checker, users, devices_of=2)
    on_gw1 = connections(cluster, "gw-1")
    assert on_gw1 > 0 and connections(cluster, "gw-2") > 0
    group = await _group(devices, checker, users)
    senders = [d for d in devices if d.device == "phone"][:4]
    await _send_killing(cluster, checker, group, senders, after=50, victim="gw-1")
    head = 1 + 40 * len(senders)
    await _until_all_have(devices, group, head, 60)
    _assert_clean(checker, devices)
    for d in devices:
        assert _seqs(d, group) == list(range(1, head + 1)), f"{d.user}/{d.device}"
    assert connections(cluster, "gw-2") == len(devices)
    assert sum(d.client.reconnects for d in devices) >= on_gw1
    assert metric(cluster, "gw-2", "chatplane_group_pushed_total") > 0
    for d in devices:
        await d.stop()


async def test_kill_9_of_the_state_instance_pacing_the_group(make_cluster: ClusterFactory) -> None:
    """The group's owner on the state ring dies under traffic: the im's group
    outbox moves to the next instance, and what the dead one held queued is
    repaired by the head check."""
    cluster = make_cluster(gateways=2, ims=1, states=2, env=LARGE)
    checker = DeliveryChecker()
    users = [f"s{i}" for i in range(6)]
    devices = await _online(cluster, checker, users)
    group = await _group(devices, checker, users)
    owner = HashRing(cluster.names("state")).owner(group)
    assert owner is not None
    await _send_killing(cluster, checker, group, devices[:3], after=40, victim=owner)
    head = 1 + 40 * 3
    await _until_all_have(devices, group, head, 60)
    _assert_clean(checker, devices)
    for d in devices:
        assert _seqs(d, group) == list(range(1, head + 1)), f"{d.user}/{d.device}"
    survivor = next(n for n in cluster.names("state") if n != owner)
    assert metric(cluster, survivor, "chatplane_state_group_messages_total") > 0
    for d in devices:
        await d.stop()
