"""Failover against a real `cluster up` (separate processes, real Redis):
kill -9 of a gateway, of an im, of a state instance, and Redis restarted
empty, each under traffic; every device must end with every acked message
once, in seq order, and every conversation's seqs contiguous."""

from __future__ import annotations

import asyncio

import pytest
import redis

from chatplane.registry.ring import HashRing, ring_key
from tests.cluster.conftest import Chat, ClusterFactory, connections, get_json, metric
from tests.services import RedisService

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def _kill_during(chat: Chat, per_sender: int, after_acks: int,
                       action: object, in_flight: int = 5) -> None:
    async def killer() -> None:  # acks as they come (seqs are known per sender at its end)
        while sum(chat.checker.acks_by_sender.values()) < after_acks:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(action)  # type: ignore[arg-type]

    await asyncio.wait_for(asyncio.gather(killer(), chat.send(per_sender, "m", in_flight)), 90)


async def test_kill_9_one_of_two_gateways(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=2, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="g")
    on_gw1 = connections(cluster, "gw-1")
    assert on_gw1 > 0 and connections(cluster, "gw-2") > 0, "dispatch should spread clients"
    await _kill_during(chat, 60, after_acks=120, action=lambda: cluster.kill("gw-1"))
    await chat.settle(60)
    chat.assert_clean()
    assert connections(cluster, "gw-2") == len(chat.devices)
    assert sum(d.client.reconnects for d in chat.devices) >= on_gw1
    await chat.close()


async def test_kill_9_one_of_two_im(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=2, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="i")
    ring = HashRing(cluster.names("im"))
    owned = [c for c in chat.seqs if ring.owner(ring_key(c)) == "im-1"]
    assert owned, "the test needs a conversation that im-1 sequences"
    at_kill: dict[str, int] = {}

    def acked(conv: str) -> int:
        return sum(chat.checker.acks_by_sender[u] for u in conv.split(":")[1:])

    def kill() -> None:
        at_kill.update({c: acked(c) for c in owned})
        cluster.kill("im-1")

    await _kill_during(chat, 60, after_acks=120, action=kill)
    await chat.settle(60)
    chat.assert_clean()
    # im-1's conversations went on after its death: sequenced by im-2, with
    # no repeat and no gap (assert_clean checks seqs 1..n)
    assert any(at_kill[c] < len(chat.seqs[c]) for c in owned)
    ims = get_json(cluster.dispatch_url.replace(
        str(cluster.members["ipconf"].http_port), str(cluster.members["im-2"].http_port))
        + "/readyz")
    assert ims["ready"] is True
    # im-1 comes back and joins the ring again; seqs go on from where they are
    cluster.start_member("im-1")
    await chat.send(10, "after")
    await chat.settle(30)
    chat.assert_clean()
    await chat.close()


@pytest.mark.parametrize("victim", ["im-1", "gw-1"])
async def test_kill_9_with_32_sends_in_flight_keeps_each_senders_cid_order(
        make_cluster: ClusterFactory, victim: str) -> None:
    """Each sender pipelines 32 sends; an im (its sends fail over to the
    next owner) or a gateway (its devices resend through another) dies
    under them: every sender's acks still rise with its cids."""
    cluster = make_cluster(gateways=2, ims=2, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="p")
    await _kill_during(chat, 120, after_acks=200, action=lambda: cluster.kill(victim),
                       in_flight=32)
    await chat.settle(60)
    chat.assert_clean()
    assert chat.checker.verdict().totals["cid_order"] == 0
    await chat.close()


async def test_kill_9_one_of_two_state(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=2, states=2)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="s")
    await _kill_during(chat, 60, after_acks=120, action=lambda: cluster.kill("state-1"))
    await chat.settle(60)
    chat.assert_clean()
    cluster.start_member("state-1")
    await chat.send(10, "after")
    await chat.settle(30)
    chat.assert_clean()
    await chat.close()


async def test_only_state_instance_killed_and_restarted(make_cluster: ClusterFactory) -> None:
    """With one state instance, deliveries wait in the im outboxes while it is
    down and are retransmitted when it is back; nothing acked is lost."""
    cluster = make_cluster(gateways=1, ims=1, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=2, tag="k")

    def bounce() -> None:
        cluster.kill("state-1")
        cluster.start_member("state-1")

    await _kill_during(chat, 50, after_acks=60, action=bounce)
    await chat.settle(60)
    chat.assert_clean()
    await chat.close()


async def test_redis_restarted_empty(make_cluster: ClusterFactory,
                                     redis_server: RedisService) -> None:
    cluster = make_cluster(gateways=2, ims=2, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="r")
    await _kill_during(chat, 60, after_acks=120, action=redis_server.restart_empty)
    await chat.settle(60)
    chat.assert_clean()
    # the registry rebuilt itself: dispatch lists both gateways again
    for _ in range(50):
        endpoints = get_json(cluster.dispatch_url + "/v1/dispatch?uid=x").get("endpoints", [])
        if len(endpoints) == 2:  # type: ignore[arg-type]
            break
        await asyncio.sleep(0.1)
    assert len(endpoints) == 2  # type: ignore[arg-type]
    await chat.send(10, "after")
    await chat.settle(30)
    chat.assert_clean()
    await chat.close()


async def test_pushes_pending_while_state_is_down_arrive_after(
        make_cluster: ClusterFactory) -> None:
    """The last messages before a quiet period are sent while the only state
    instance is dead: no later message will reveal a gap, so they must be
    retransmitted (im outbox) once state is back. The head check is off here,
    so this is the outbox's retry alone."""
    cluster = make_cluster(gateways=2, ims=2, states=1, env={"CHATPLANE_HEAD_CHECK_S": "0"})
    chat = Chat()
    await chat.open(cluster, pairs=3, tag="p")
    await chat.send(10, "before")
    await chat.settle(30)
    cluster.kill("state-1")
    await chat.send(5, "while-down")  # acked: stored, but not deliverable now
    await asyncio.sleep(1.0)
    assert all(len(d.received) == 20 for d in chat.devices)  # nothing could be pushed
    cluster.start_member("state-1")
    await chat.settle(30)
    chat.assert_clean()
    await chat.close()


async def test_head_check_repairs_a_lost_push(make_cluster: ClusterFactory,
                                              redis_server: RedisService) -> None:
    """Routes lost with Redis and no later message: the gateway's head check
    sees inbox heads past what it pushed and tells the devices to sync."""
    cluster = make_cluster(gateways=2, ims=2, states=1, env={"CHATPLANE_HEAD_CHECK_S": "1"})
    chat = Chat()
    await chat.open(cluster, pairs=3, tag="h")
    await chat.send(5, "before")
    await chat.settle(30)
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    for key in client.scan_iter("cp:route:*"):  # as if Redis lost only the routes
        client.delete(key)
    client.close()
    await chat.send(3, "lost")  # stored and acked; state finds no route: not pushed
    await chat.settle(30)
    chat.assert_clean()
    hints = sum(metric(cluster, name, "chatplane_head_check_hints_total")
                for name in cluster.names("gateway"))
    assert hints > 0
    await chat.close()
