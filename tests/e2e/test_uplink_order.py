"""A device's pipelined sends are sequenced in its cid order in `chatplane
up`: one TCP connection per sender, 32 sends in flight into a conversation
opened just before (tests/cluster/test_uplink_order.py does the same
through a cluster)."""

from __future__ import annotations

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from tests.support.pipelined import pipeline_into_fresh_conversations
from tests.support.server import ServerProcess

SENDERS, ROUNDS, WINDOW = 8, 6, 32


async def test_pipelined_sends_keep_cid_order(server: ServerProcess,
                                              signer: TokenSigner) -> None:
    checker = DeliveryChecker()
    await pipeline_into_fresh_conversations(server.tcp_port, signer, checker, senders=SENDERS,
                                            rounds=ROUNDS, window=WINDOW)
    verdict = checker.verdict()
    assert verdict.acked == SENDERS * ROUNDS * WINDOW
    assert verdict.totals["cid_order"] == 0, verdict.summary()
