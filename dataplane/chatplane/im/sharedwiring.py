"""The region machinery wired to an im on a CQL keyspace the regions share (two
datacenters; docs/architecture.md, "Regions on CQL"), beside regionwiring.py's for
embedded stores. One place for both runs of it: `chatplane up` (node.py: one process
per region, its notices in memory) and every im of a cluster per region (im/app.py: the
notices and the follower's cursors in the region's Redis, im/sharednotices.py; one im
follows the peers' notices, im/regionjobs.py).

Homes are decided by the shared `homes` row at SERIAL (no offer round: no peers to
ask), sends and group changes arriving from another region are sequenced at the home
(`via`: a cluster hands them to the conversation's owner on the ring), each region
writes its own users' inbox entries, and the home's notices tell the peers which
entries to write and push (regions/notices.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from chatplane.im import regionwiring
from chatplane.im.service import ImService
from chatplane.regions import links as region_links
from chatplane.regions.homes import Homes
from chatplane.regions.notices import FanOut, NoticeCursors, NoticeFollower, Notices
from chatplane.settings import Settings
from chatplane.storage.base import InboxItem, SharedKeyspace, Storage

log = logging.getLogger("chatplane.im")


def shared(storage: Storage) -> bool:
    """Whether the store is a keyspace the regions share (CQL)."""
    return isinstance(storage, SharedKeyspace)


def owners_fan_out(im: ImService) -> FanOut:
    """A cluster's notice follower: the entries written by their inboxes' owners on the
    im ring (im/inboxes.py), who push them; none come back to push here."""
    inboxes = im.sequencer.inboxes
    assert inboxes is not None

    async def fan_out(conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]]) -> list[InboxItem]:
        await inboxes.fan_out(conversation_id, entries)
        return []

    return fan_out


def link(settings: Settings, storage: Storage, im: ImService,
         prober: region_links.PeerProber, notices: Notices, *,
         fan_out: FanOut | None = None, cursors: NoticeCursors | None = None,
         via: Callable[[regionwiring.HomeSend], regionwiring.HomeSend] | None = None,
         ) -> region_links.SharedSequencing:
    """The shared keyspace's machinery of this im (`shared(storage)` holds). `fan_out`:
    how the follower writes its region's entries (default the store's, this process
    holding the inboxes); `cursors`: where it keeps its place (default: memory)."""
    assert isinstance(storage, SharedKeyspace)
    region, links = settings.server.region, settings.links
    homes = Homes(region, storage, [], prober.channel)
    homes.notices = notices
    follower = NoticeFollower(region, list(prober.links), prober.channel, homes.users_here,
                              fan_out or storage.fan_out, im.sequencer.replicated, cursors)
    # each region writes its users' entries; a take's recovered message is noticed
    storage.serve_users(homes.users_here, homes.recovered)
    im.sequencer.homes = homes
    prober.extra = follower.report
    if links.failover_after_s > 0 or links.failover_witness:
        log.warning("failover is off on a shared CQL keyspace: this region takes over no"
                    " homes (moving a lost region's homes needs a third datacenter,"
                    " docs/architecture.md \"Regions on CQL\")")
    home_send = regionwiring.local_home_send(im, None)
    return region_links.SharedSequencing(homes, via(home_send) if via is not None else home_send,
                                         im.groups.handle_op, im.groups.admin_change, notices,
                                         follower)
