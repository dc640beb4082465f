"""Sequencing leases against a real `cluster up` (separate im processes on one
shared SQLite file, or on the real CQL server; real Redis): an im owner is paused (SIGSTOP) while its
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
from collections.abc import Callable

import pytest

from chatplane.cluster import Cluster
from chatplane.registry.ring import HashRing, ring_key
from tests.cluster.conftest import Chat, ClusterFactory, metric
from tests.services import CqlService

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TAKEN = "chatplane_im_leases_taken_total"
FENCED = "chatplane_im_appends_fenced_total"
Leases = dict[str, tuple[int, str]]  # conversation -> (epoch, owner), read from storage


def sqlite_leases(cluster: Cluster, conversations: list[str]) -> Leases:
    db = sqlite3.connect(cluster.data_dir / "chatplane.db", timeout=10)
    try:
        marks = ",".join("?" * len(conversations))
        rows = db.execute(f"SELECT conversation_id, epoch, owner FROM leases"
                          f" WHERE conversation_id IN ({marks})", conversations).fetchall()
    finally:
        db.close()
    return {c: (int(e), str(o)) for c, e, o in rows}


def cql_leases(cql_server: CqlService, keyspace: str) -> Callable[[Cluster, list[str]], Leases]:
    def read(_: Cluster, conversations: list[str]) -> Leases:
        from cassandra.cluster import Cluster as CqlCluster

        cluster = CqlCluster(list(cql_server.hosts), port=cql_server.port)
        try:
            session = cluster.connect()
            # one row per sequence since schema 6 (docs/storage.md, "Seq blocks")
            select = session.prepare(f"SELECT epoch, owner FROM {keyspace}.sequencers"
                                     " WHERE key = ?")
            found = {c: session.execute(select, (f"c:{c}",), timeout=10).one()
                     for c in conversations}
            return {c: (int(r.epoch), str(r.owner)) for c, r in found.items() if r is not None}
        finally:
            cluster.shutdown()

    return read


@pytest.fixture(params=["sqlite", pytest.param("scylla", marks=pytest.mark.cql)])
async def deployment(request: pytest.FixtureRequest, make_cluster: ClusterFactory
                     ) -> tuple[Cluster, Callable[[Cluster, list[str]], Leases]]:
    if request.param == "sqlite":
        return make_cluster(gateways=2, ims=2, states=1), sqlite_leases
    from chatplane.storage import migrations
    from tests.storage.conftest import new_keyspace, scylla_settings

    cql_server: CqlService = request.getfixturevalue("cql_server")
    keyspace = new_keyspace()  # timeline partitions of 4 seqs: takeovers cross them
    await migrations.migrate(scylla_settings(cql_server, keyspace))
    cluster = make_cluster(gateways=2, ims=2, states=1, storage="scylla", env={
        "CHATPLANE_CQL_HOSTS": ",".join(cql_server.contact_points),
        "CHATPLANE_KEYSPACE": keyspace})
    return cluster, cql_leases(cql_server, keyspace)


async def send_until(chat: Chat, done: Callable[[], bool], failure: str, prefix: str) -> None:
    """Rounds of sends until `done()`, for at most a minute."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    round_no = 0
    while True:
        round_no += 1
        await asyncio.wait_for(chat.send(3, f"{prefix}{round_no}-"), 60)
        if done():
            return
        assert loop.time() < deadline, failure


async def test_a_paused_owner_is_fenced_after_it_resumes(
        deployment: tuple[Cluster, Callable[[Cluster, list[str]], Leases]]) -> None:
    cluster, leases = deployment
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="l")
    ring = HashRing(cluster.names("im"))
    owned = [c for c in chat.seqs if ring.owner(ring_key(c)) == "im-1"]
    assert owned, "the test needs a conversation that im-1 sequences"
    # (a first append slower than the RPC deadline fails over to im-2, which
    # then holds that lease until im-1 takes it back with the next send)
    await send_until(chat, lambda: {o for _, o in leases(cluster, owned).values()} == {"im-1"},
                     "im-1 should hold the leases of its conversations", "before")
    before = leases(cluster, owned)

    # Paused while idle: a process stopped inside a SQLite write transaction
    # would hold the shared file's lock and stall every writer until resumed.
    # (Its stale appends after SIGCONT are what the fence must refuse.)
    proc = cluster.members["im-1"].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        await asyncio.wait_for(chat.send(10, "paused"), 90)
        during = leases(cluster, owned)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert all(during[c][1] == "im-2" and during[c][0] > before[c][0] for c in owned), \
        "im-2 should have taken every lease of the paused im-1"

    # Back on the ring, im-1 gets its conversations' requests again with its
    # old epochs (or runs the requests it held while paused): refused by
    # storage, retried on im-2; then it takes its conversations back.
    await send_until(chat, lambda: metric(cluster, "im-1", FENCED) > 0 and any(
        owner == "im-1" for _, owner in leases(cluster, owned).values()),
        "im-1 never appended with a stale lease, or never came back", "after")
    await chat.send(5, "last")
    await chat.settle(60)
    chat.assert_clean()  # 0 lost, 0 duplicated, 0 reordered, seqs 1..n per conversation
    after = leases(cluster, owned)
    assert all(after[c][0] > during[c][0] for c in owned if after[c][1] == "im-1")
    assert metric(cluster, "im-1", TAKEN) > len(owned)  # its first leases, then again
    await chat.close()


async def test_kill_9_of_the_owner_mid_batch_loses_nothing(
        deployment: tuple[Cluster, Callable[[Cluster, list[str]], Leases]]) -> None:
    """kill -9 of the im that sequences conversations while their sends are in
    flight (on CQL: with seq blocks half used and batches on the wire): im-2
    takes the leases over from the heads actually stored, finishes what the
    dead one left half written, and every acked message arrives once, in
    order, with seqs 1..n; im-1 restarted takes its conversations back."""
    cluster, leases = deployment
    chat = Chat()
    await chat.open(cluster, pairs=4, tag="k")
    ring = HashRing(cluster.names("im"))
    owned = [c for c in chat.seqs if ring.owner(ring_key(c)) == "im-1"]
    assert owned, "the test needs a conversation that im-1 sequences"
    await send_until(chat, lambda: {o for _, o in leases(cluster, owned).values()} == {"im-1"},
                     "im-1 should hold the leases of its conversations", "before")
    before = leases(cluster, owned)

    async def kill_when_busy() -> None:
        acked = sum(chat.checker.acks_by_sender.values())
        while sum(chat.checker.acks_by_sender.values()) < acked + 40:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(cluster.kill, "im-1")

    await asyncio.wait_for(asyncio.gather(kill_when_busy(), chat.send(30, "busy")), 120)
    during = leases(cluster, owned)
    assert all(during[c][1] == "im-2" and during[c][0] > before[c][0] for c in owned)
    await chat.settle(60)
    chat.assert_clean()
    await asyncio.to_thread(cluster.start_member, "im-1")
    await chat.send(10, "after")
    await chat.settle(60)
    chat.assert_clean()
    await chat.close()
