"""Sequencing leases against a real `cluster up` (separate im processes on one
shared SQLite file, real Redis): an im owner is paused (SIGSTOP) while its
conversations get traffic, so the gateways fail over and the other im takes
the leases; once resumed (SIGCONT) and back on the ring, the paused one still
believes it holds them, and storage refuses its appends until it takes them
back. Two instances never both sequence a conversation: every device ends
with every acked message once and in order, and seqs stay 1..n."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3

import pytest

from chatplane.cluster import Cluster
from chatplane.registry.ring import HashRing
from tests.cluster.conftest import Chat, ClusterFactory, metric

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TAKEN = "chatplane_im_leases_taken_total"
FENCED = "chatplane_im_appends_fenced_total"


def leases(cluster: Cluster, conversations: list[str]) -> dict[str, tuple[int, str]]:
    """conversation -> (epoch, owner), read from the storage itself."""
    db = sqlite3.connect(cluster.data_dir / "chatplane.db", timeout=10)
    try:
        marks = ",".join("?" * len(conversations))
        rows = db.execute(f"SELECT conversation_id, epoch, owner FROM leases"
                          f" WHERE conversation_id IN ({marks})", conversations).fetchall()
    finally:
        db.close()
    return {c: (int(e), str(o)) for c, e, o in rows}


async def test_a_paused_owner_is_fenced_after_it_resumes(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=2, states=1)
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="l")
    ring = HashRing(cluster.names("im"))
    owned = [c for c in chat.seqs if ring.owner(c) == "im-1"]
    assert owned, "the test needs a conversation that im-1 sequences"
    await chat.send(5, "before")
    await chat.settle(30)
    assert {owner for _, owner in leases(cluster, owned).values()} == {"im-1"}
    before = leases(cluster, owned)

    # Paused while idle: a process stopped inside a SQLite write transaction
    # would hold the shared file's lock and stall every writer until resumed.
    proc = cluster.members["im-1"].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        await asyncio.wait_for(chat.send(10, "paused"), 90)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    during = leases(cluster, owned)
    assert all(during[c][1] == "im-2" and during[c][0] > before[c][0] for c in owned), \
        "im-2 should have taken every lease of the paused im-1"
    assert metric(cluster, "im-1", FENCED) == 0

    # Back on the ring, im-1 gets its conversations' requests again with its
    # old epochs: refused by storage, retried on im-2, then taken back.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while metric(cluster, "im-1", FENCED) == 0:
        assert loop.time() < deadline, "im-1 never appended with a stale lease"
        await asyncio.wait_for(chat.send(3, f"after{int(loop.time())}"), 60)
    await chat.send(5, "last")
    await chat.settle(60)
    chat.assert_clean()  # 0 lost, 0 duplicated, 0 reordered, seqs 1..n per conversation
    after = leases(cluster, owned)
    moved_back = [c for c in owned if after[c][1] == "im-1"]
    assert moved_back and all(after[c][0] > during[c][0] for c in moved_back)
    assert metric(cluster, "im-1", TAKEN) > len(owned)  # its first leases, then again
    await chat.close()
