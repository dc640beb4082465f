"""A group create cut by a paused im, on a real `cluster up` (2 gateways, 2 ims
on one SQLite file, real Redis): the creator's im is stopped (SIGSTOP) a moment
after the create is sent, so the gateway's call on it outlasts the RPC deadline
and the gateway makes the create on the other im; resumed 3 s later, the first
im finishes its own attempt. Every attempt carries the create's key (user,
device, cid), so each create leaves exactly one group (before the key, such a
cut left two)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from chatplane.client import Client
from chatplane.cluster import Cluster
from chatplane.registry.ring import HashRing
from tests.cluster.conftest import ClusterFactory, metric

pytestmark = [pytest.mark.redis, pytest.mark.slow]

FAILOVERS = "chatplane_im_failovers_total"  # a gateway's calls retried on another im
ANYONE = {"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}  # members added, not invited
PAUSE_AFTER_S = (0.02, 0.05, 0.08, 0.11, 0.14)  # into the create, somewhere mid-call


def user_of(ring: HashRing, owner: str, prefix: str) -> str:
    """A user name whose requests the ring gives to `owner`."""
    return next(f"{prefix}{i}" for i in range(1000) if ring.owner(f"{prefix}{i}") == owner)


async def groups_of(client: Client) -> list[str]:
    return sorted(c.conversation_id for c in await client.conversations(limit=200)
                  if c.kind == "group")


async def test_a_create_cut_mid_call_makes_one_group(make_cluster: ClusterFactory) -> None:
    cluster: Cluster = make_cluster(gateways=2, ims=2, states=1, env=ANYONE)
    ring = HashRing(cluster.names("im"))
    ann, bob = user_of(ring, "im-1", "gra"), user_of(ring, "im-2", "grb")
    creator = Client(cluster.dispatch_url, cluster.signer.mint(ann, "phone"),
                     request_timeout_s=60)
    await creator.connect()
    proc = cluster.members["im-1"].proc
    assert proc is not None
    made: list[str] = []
    try:
        for pause_after in PAUSE_AFTER_S:
            create = asyncio.ensure_future(creator.create_group(f"cut{pause_after}", [bob]))
            await asyncio.sleep(pause_after)
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(3)  # the gateway gives up on im-1 and asks im-2
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            made.append(await asyncio.wait_for(create, 60))
            await asyncio.sleep(1)  # im-1's own attempt, resumed, lands
        assert len(set(made)) == len(PAUSE_AFTER_S)
        retried = sum(metric(cluster, g, FAILOVERS) for g in cluster.names("gateway"))
        assert retried > 0, "no create was retried on the other im"
        assert await groups_of(creator) == sorted(made), "a create left more than one group"
    finally:
        await creator.close()
