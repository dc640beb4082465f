"""Order within a lane across a reopened stream, in a real cluster: an im is
killed under 32 pipelined sends per sender and started again on its
address. The gateway's stream of send lanes to it breaks (its batches fail
UNAVAILABLE and go to the next owner, as after a failed unary call), and a
new stream is opened when it is back; every sender's acks still rise with
its cids, and every device ends with every acked message once, in order."""

from __future__ import annotations

import asyncio

import pytest

from chatplane.registry.ring import HashRing, ring_key
from tests.cluster.conftest import Chat, ClusterFactory, metric

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_sends_keep_cid_order_across_a_reopened_lane_stream(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=1, ims=2, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="r")
    ring = HashRing(cluster.names("im"))
    assert any(ring.owner(ring_key(c)) == "im-1" for c in chat.seqs), "needs im-1 to own one"

    def bounce() -> None:
        cluster.kill("im-1")
        cluster.start_member("im-1")

    async def bouncer() -> None:
        while sum(chat.checker.acks_by_sender.values()) < 200:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(bounce)

    await asyncio.wait_for(asyncio.gather(bouncer(), chat.send(120, "m", in_flight=32)), 120)
    await chat.send(30, "after", in_flight=32)  # im-1 is back: its lanes on a new stream
    await chat.settle(60)
    chat.assert_clean()
    assert chat.checker.verdict().totals["cid_order"] == 0
    assert metric(cluster, "gw-1", "chatplane_im_send_lane_streams_broken_total") >= 1
    assert metric(cluster, "gw-1", "chatplane_im_send_lane_streams_opened_total") >= 2
    await chat.close()
