"""A group create that outlasts the gateway's RPC deadline, on a real `cluster up`
(2 gateways, 2 ims, real Redis; SQLite or the real CQL server): the creator's im
waits for the member's inbox owner, paused (SIGSTOP), so the gateway gives up on it
and tries the next im, and the SDK resends the create, while the first attempts go
on in storage. Every attempt carries the create's key (user, device, cid), so the
user ends with exactly one group (before the key, one create made several)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from chatplane.client import Client
from chatplane.cluster import Cluster
from chatplane.registry.ring import HashRing
from tests.cluster.conftest import ClusterFactory, metric
from tests.services import CqlService

pytestmark = [pytest.mark.redis, pytest.mark.slow]

FAILOVERS = "chatplane_im_failovers_total"  # a gateway's calls retried on another im
ANYONE = {"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}  # members added, not invited


@pytest.fixture(params=["sqlite", pytest.param("scylla", marks=pytest.mark.cql)])
async def cluster(request: pytest.FixtureRequest, make_cluster: ClusterFactory) -> Cluster:
    if request.param == "sqlite":
        return make_cluster(gateways=2, ims=2, states=1, env=ANYONE)
    from chatplane.storage import migrations
    from tests.storage.conftest import new_keyspace, scylla_settings

    cql_server: CqlService = request.getfixturevalue("cql_server")
    keyspace = new_keyspace()
    await migrations.migrate(scylla_settings(cql_server, keyspace))
    return make_cluster(gateways=2, ims=2, states=1, storage="scylla", env={
        **ANYONE, "CHATPLANE_CQL_HOSTS": ",".join(cql_server.contact_points),
        "CHATPLANE_KEYSPACE": keyspace})


def user_of(ring: HashRing, owner: str, prefix: str) -> str:
    """A user name whose requests and inbox the ring gives to `owner`."""
    return next(f"{prefix}{i}" for i in range(1000) if ring.owner(f"{prefix}{i}") == owner)


async def groups_of(client: Client) -> list[str]:
    return sorted(c.conversation_id for c in await client.conversations(limit=200)
                  if c.kind == "group")


async def test_a_create_retried_past_the_deadline_makes_one_group(cluster: Cluster) -> None:
    ring = HashRing(cluster.names("im"))
    ann, bob = user_of(ring, "im-1", "gra"), user_of(ring, "im-2", "grb")
    creator = Client(cluster.dispatch_url, cluster.signer.mint(ann, "phone"),
                     request_timeout_s=60)
    await creator.connect()
    member: Client | None = None
    proc = cluster.members["im-2"].proc
    assert proc is not None
    sent = creator.requests
    try:
        # bob's inbox owner paused while idle: ann's im waits a deadline for its
        # fan-out before writing bob's entry itself, so the gateway's call on it times
        # out, the next im (paused) too, and the SDK resends the create
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            group = await asyncio.wait_for(creator.create_group("retried", [bob]), 60)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await asyncio.sleep(3)  # what the paused im held runs now; late attempts land
        retried = sum(metric(cluster, g, FAILOVERS) for g in cluster.names("gateway"))
        assert retried > 0 or creator.requests > sent + 1, "the create was not retried"
        assert await groups_of(creator) == [group]
        member = Client(cluster.dispatch_url, cluster.signer.mint(bob, "phone"),
                        request_timeout_s=60)
        await member.connect()
        assert await groups_of(member) == [group]
        assert sorted(m.user_id for m in await creator.members(group)) == sorted([ann, bob])
    finally:
        await creator.close()
        if member is not None:
            await member.close()
