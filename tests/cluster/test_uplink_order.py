"""A device's pipelined sends are sequenced in its cid order through a real
cluster (2 gateways, 2 im, 1 state, Redis): one TCP connection per sender,
32 sends in flight, written right after the conversation is opened (when the
im that owns it has nothing cached yet, so calls that overtake each other
show: before sends went to im in ordered batches, this failed every run)."""

from __future__ import annotations

from chatplane.checker import DeliveryChecker
from tests.cluster.conftest import ClusterFactory
from tests.support.pipelined import pipeline_into_fresh_conversations

SENDERS, ROUNDS, WINDOW = 8, 6, 32


async def test_pipelined_sends_keep_cid_order(make_cluster: ClusterFactory) -> None:
    # nothing fails here: a longer RPC deadline than the cluster tests' 1 s, so that a
    # loaded machine (two test workers) answers these 256 sends late, not "retry"
    cluster = make_cluster(env={"CHATPLANE_RPC_DEADLINE_S": "5"})
    checker = DeliveryChecker()
    await pipeline_into_fresh_conversations(cluster.members["gw-1"].tcp_port, cluster.signer,
                                            checker, senders=SENDERS, rounds=ROUNDS,
                                            window=WINDOW)
    verdict = checker.verdict()
    assert verdict.acked == SENDERS * ROUNDS * WINDOW
    assert verdict.totals["cid_order"] == 0, verdict.summary()
