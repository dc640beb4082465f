"""The region machinery wired to an im (docs/architecture.md, "Regions"): homes,
forwarding, the replicated log, durability, social homes, moves and failover, over an
embedded store. One place for both runs of it: `chatplane up` (node.py: one process
per region) and the im tier of a cluster per region (im/app.py: every im serves the
`Region` link over one shared SQLite file, one of them runs the single jobs,
im/regionjobs.py).

`link` returns the `Sequencing` the `Region` servicer serves (regions/links.py) and
hooks the im's parts to it: the sequencer asks the homes where a send is sequenced,
reads hold back what no peer confirmed (sync), the store writes the inbox entries of
the users homed in this region only, and LoginAck names the inbox sequence the linked
regions share. A send forwarded here by another region is sequenced in this process
(`local_home_send`); a cluster wraps that (`via`) to hand it to the conversation's owner
on the im ring first (im/app.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from chatplane.delivery.sync import shared_inboxes_id
from chatplane.im.invalidation import pair_key
from chatplane.im.service import ImService
from chatplane.regions import links as region_links
from chatplane.regions.durability import Durability
from chatplane.regions.failover import Failover
from chatplane.regions.homes import Homes, events_user
from chatplane.regions.leases import WitnessLink
from chatplane.regions.moving import Moves
from chatplane.regions.replication import HEARTBEAT_S, Replication
from chatplane.regions.social import SocialHomes, SocialStore
from chatplane.regions.unconfirmed import Unconfirmed
from chatplane.regions.user_moves import UserMoves, UserMoveStore
from chatplane.settings import Settings
from chatplane.storage.base import AppendResult, ReplicatedLog, SendRequest, Storage

HomeSend = Callable[[SendRequest], Awaitable[AppendResult]]


def linkable(storage: Storage) -> bool:
    """Whether the store keeps the replicated log (the embedded one does)."""
    return isinstance(storage, ReplicatedLog) and isinstance(storage, SocialStore)


def local_home_send(im: ImService, social: SocialHomes | None) -> HomeSend:
    """A send forwarded by another region to this conversation's home, sent like a
    local client's (the 1:1 chat is created here by its first one); an event of a user
    homed here is appended like one emitted here (and, where reads are homed, `social`,
    a read made elsewhere moves the position here too)."""
    async def send(request: SendRequest) -> AppendResult:
        if events_user(request.conversation_id):
            result = await im.sequencer.append_event(dataclasses.replace(
                request, message_id=uuid.uuid4().hex, sent_at_ms=im.sequencer.clock_ms()))
            if social is not None:
                await social.apply([result.message])
            return result
        return await im.sequencer.send(request.sender, request.sender_device,
                                       request.conversation_id, request.cid, request.text,
                                       request.payload, request.content_type)

    return send


def link(settings: Settings, storage: Storage, im: ImService,
         prober: region_links.PeerProber, server_id: str, witness: WitnessLink | None, *,
         via: Callable[[HomeSend], HomeSend] | None = None, poll_s: float = HEARTBEAT_S,
         sole_writer: bool = False) -> region_links.Sequencing:
    """The region machinery of this im over `storage` (which `linkable` accepted).
    `poll_s`: how often a `Region.Replicate` stream looks for entries other processes
    committed to the store (a cluster's other ims); this process's own commits wake it
    at once. `sole_writer`: this process is its store's only writer (`chatplane up`), so
    users' homes can move by an admin call (the move's hold lives in its writer; a
    cluster's other ims would not see it)."""
    assert isinstance(storage, ReplicatedLog) and isinstance(storage, SocialStore)
    region, links = settings.server.region, settings.links
    durability = Durability.of(links.region_durability, links.region_sync_timeout_s,
                               storage, list(prober.links))
    homes = Homes(region, storage, list(prober.links), prober.channel, durability)
    replication = Replication(homes, storage, im.sequencer.replicated,
                              settings.social.large_group_threshold, Failover(
                                  homes, storage, prober.links, links.failover_after_s,
                                  homes.durability, witness), poll_s=poll_s)
    moves = Moves(homes, storage, storage, lambda peer: replication.peers[peer].applied_to)

    def relation_changing(user: str, other: str) -> AbstractAsyncContextManager[None]:
        """Around a write of a pair's rows applied from another region: the relation
        caches of sends here drop the pair."""
        return im.membership.changing("relation", pair_key(user, other))

    # friends decided by one region per pair, reads merged everywhere
    social = SocialHomes(homes, storage, relation_changing, im.sequencer.clock_ms,
                         f"{server_id}-relations",
                         lambda peer: (replication.peers[peer].applied_to
                                       if peer in replication.peers else None))
    replication.social = social
    home_send = local_home_send(im, social)
    # admin moves of users' homes (their inboxes, events and relations records)
    user_moves = (UserMoves(homes, storage, lambda peer: replication.peers[peer].applied_to,
                            im.sequencer.replicated)
                  if sole_writer and isinstance(storage, UserMoveStore) else None)
    sequencing = region_links.Sequencing(
        homes, replication, via(home_send) if via is not None else home_send,
        im.groups.handle_op, im.groups.admin_change, moves, social,
        im.social.decide_friend_op, user_moves)
    im.sequencer.homes = homes
    # sync: reads serve nothing sequenced here that no peer confirmed yet
    unconfirmed = Unconfirmed(region, durability, storage)
    im.sequencer.unconfirmed = im.reads.unconfirmed = unconfirmed
    im.social.regions = social
    # user homes: this store writes the inbox entries of the users homed here,
    # and the linked regions share one inbox sequence per user
    storage.serve_region(region)
    im.reads.shared_inboxes = shared_inboxes_id(settings.server.cluster,
                                                [region, *prober.links])
    prober.extra = replication.report
    prober.extra_region = replication.log_report
    return sequencing
