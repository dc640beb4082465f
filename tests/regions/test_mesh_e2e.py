"""The first "Must hold" of issue 17 at its own scale, with real processes, in two and in
three regions: `chatplane up` regions in `sync` durability (the default) and a failover
witness, every link through a proxy that can cut it. 50 users homed in every region
(their first login), each with 3 devices spread over the regions; one 50-member group
and 25 1:1 chats homed in every region. Every device sends into its chat and the group
at a bounded rate while region links are cut and healed four times, each cut falling
in the middle of the traffic. Then: every device got every acked message exactly once
and in one order (the delivery checker), and every region's store holds the same
messages seq for seq and the same (user, inbox_seq) entries (docs/architecture.md,
"Regions" and "User homes"). The machinery is tests/support/crowd.py."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.crowd import Crowd, Cut, Layout
from tests.support.regions import sees, wait_for, witnessed_regions
from tests.support.three_regions import Mesh, report, three_regions

pytestmark = pytest.mark.slow

USERS = 50
NO_CONSENT = {"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"}  # members are added, not invited
# each cut below the sync timeout (3 s) and the failover detection (5 s): no home moves


async def test_fifty_users_three_devices_each_through_repeated_cuts(tmp_path: Path) -> None:
    """Two regions: 25 users homed in each, 3 devices each over both (two at home and
    one away, or the other way round), a 50-member group homed in eu and 25 1:1 chats
    homed alternately in eu and us, all sending through four cuts of the region link
    (both regions still reach the witness)."""
    # one HTTP session for the 150 clients; unbounded: each websocket holds a connection
    async with witnessed_regions(tmp_path, NO_CONSENT) as (eu, us, _, cuts), \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for me, other in ((eu, us), (us, eu)):
            await asyncio.to_thread(wait_for, functools.partial(sees, me, other.name), 20,
                                    f"{me.name} sees {other.name}")
        crowd = Crowd(Layout(("eu", "us"), USERS), {"eu": eu, "us": us})
        figures = await crowd.run(http, [Cut("eu-us", cuts.partition, s)
                                         for s in (1.0, 2.0, 1.5, 2.0)], cuts.heal)
        print(f"\nmesh: {figures}")


def _severing(mesh: Mesh, *links: tuple[str, str]) -> Callable[[], None]:
    """A cut of each link (both ways), which had connections open to reset (at least
    each side's replication stream)."""
    def sever() -> None:
        for a, b in links:
            assert mesh.cut(a, b) >= 2, f"{a}-{b}: no open connection to cut"
    return sever


async def test_three_regions_fifty_users_through_cuts_of_every_link(tmp_path: Path) -> None:
    """Three regions in a full mesh: 17 users homed in eu, 17 in us, 16 in ap, each
    with a device in every region; a 50-member group homed in eu and 25 1:1 chats homed
    in turn in eu, us and ap (a third of them where neither member is homed). All send
    through four cuts, each of other links: eu-us, then us-ap, then eu-ap (a region's
    sync acks confirmed by the third region alone; forwards across the cut link refused
    and resent), then ap cut from both (its homes' sends wait for a confirmation until
    the heal). Every region still reaches the witness: no home moves."""
    async with three_regions(tmp_path, NO_CONSENT, witness=True) as mesh, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await mesh.all_see_each_other()
        crowd = Crowd(Layout(("eu", "us", "ap"), USERS), mesh.regions)
        cuts = [Cut("eu-us", _severing(mesh, ("eu", "us")), 1.0),
                Cut("us-ap", _severing(mesh, ("us", "ap")), 2.0),
                Cut("eu-ap", _severing(mesh, ("eu", "ap")), 1.5),
                Cut("ap-alone", _severing(mesh, ("eu", "ap"), ("us", "ap")), 2.0)]
        try:
            figures = await crowd.run(http, cuts, mesh.heal)
        except BaseException:
            print(report(mesh))
            raise
        print(f"\nmesh: {figures}")
