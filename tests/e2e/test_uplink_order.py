"""A device's pipelined sends are sequenced in its cid order in `chatplane
up`: one TCP connection per sender, 32 sends in flight into a conversation
opened just before (tests/cluster/test_uplink_order.py does the same
through a cluster)."""

from __future__ import annotations

import urllib.request

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


def commits(server: ServerProcess) -> float:
    """How many group commits the server's SQLite writer made so far."""
    with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("chatplane_storage_commit_seconds_count"))


async def test_one_devices_pipelined_sends_share_commits(server: ServerProcess,
                                                         signer: TokenSigner) -> None:
    """A device's window of sends into one conversation is stored in a few group
    commits, not one commit per send (storage/pipelining.py): one sender alone, so
    nothing else fills the commits."""
    checker = DeliveryChecker()
    before = commits(server)
    await pipeline_into_fresh_conversations(server.tcp_port, signer, checker, senders=1,
                                            rounds=2, window=WINDOW)
    made = commits(server) - before
    verdict = checker.verdict()
    assert verdict.acked == 2 * WINDOW and verdict.totals["cid_order"] == 0, verdict.summary()
    # each round: the open, then its 32 sends (one per commit before the change)
    assert made <= 2 * (1 + WINDOW // 4), made
