"""The im tier's parts, made once and wired to each other: the composition root.

Each job has its module, and the parts call each other directly, never back
through this one:
- im/sequencing.py (`Sequencer`): a send's checks, appends under the lease,
  delivery to the state tier, events, another region's messages;
- im/membership.py (`Membership`): the cached conversations, member lists and
  spans, and the announced changes to them;
- im/reads.py (`Reads`): sync, history, the head checks;
- im/social.py (`Relations`, `Social`) and im/groups.py (`Groups`), given the
  parts they use.
Client requests come in by frame (im/requests.py); this object is also what
the gateway calls in process (`up`; gateway/service.py, `ImApi`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.metrics_core import Metric

from chatplane.im import requests
from chatplane.im.groups import Groups
from chatplane.im.hotcache import HotCache
from chatplane.im.invalidation import LocalInvalidations, Versions
from chatplane.im.membership import Membership
from chatplane.im.reads import Reads
from chatplane.im.sequencing import Deliverer, Owners, Sequencer
from chatplane.im.social import Relations, Social
from chatplane.protocol.bounds import Bounds
from chatplane.settings import Abuse, Limits
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import Storage
from chatplane.v1 import frames_pb2 as pb


def _now_ms() -> int:
    return int(time.time() * 1000)


class ImService:
    def __init__(
        self,
        storage: Storage,
        state: Deliverer,
        limits: Limits,
        clock_ms: Callable[[], int] = _now_ms,
        social: SocialSettings | None = None,
        server_id: str = "im",
        fenced: bool = False,
        owners: Owners | None = None,
        abuse: Abuse | None = None,
        versions: Versions | None = None,
    ) -> None:
        self.storage = storage
        self.limits = limits
        self.bounds = Bounds.from_limits(limits)  # what a request field may hold
        settings = social or SocialSettings()
        # versions of what is cached of membership, relations and conversation
        # settings: one process drops at once; a cluster reads a Redis stream
        # (im/invalidation.py, docs/caches.md)
        self.versions: Versions = versions or LocalInvalidations()
        self.hot = HotCache(settings.hot_cache_messages)
        self.membership = Membership(storage, self.versions, clock_ms, settings)
        relations = Relations(storage, self.versions, settings)
        self.sequencer = Sequencer(storage, state, self.membership, relations, self.hot, limits,
                                   settings, clock_ms, server_id, fenced, owners)
        self.reads = Reads(storage, self.membership, self.hot, limits, settings)
        self.social = Social(storage, self.membership, self.sequencer, settings, self.bounds,
                             clock_ms)
        self.groups = Groups(self.sequencer, self.membership, storage, settings,
                             abuse or Abuse(), self.bounds)

    def families(self) -> Iterator[Metric]:
        """The parts' counters and caches, for /metrics (cluster im and `up`)."""
        yield from self.sequencer.families()
        yield from self.hot.families()
        yield from self.membership.families()
        yield from self.versions.families()

    async def handle(self, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
        """A client request frame in, its reply (or Error) frame out."""
        return await requests.handle(self, user_id, device_id, frame)

    async def handle_sends(self, user_id: str, device_id: str,
                           frames: Sequence[pb.Frame]) -> list[pb.Frame]:
        """One device's send frames into one conversation, in cid order: the
        replies, in the same order (im/requests.py, `handle_sends`)."""
        return await requests.handle_sends(self, user_id, device_id, frames)

    async def inbox_head(self, user_id: str) -> int:
        """The user's inbox head (a login asks it first: with regions linked, the user's
        home is placed here then if it has none)."""
        if self.sequencer.homes is not None:
            self.sequencer.homes.login(user_id)
        return await self.reads.inbox_head(user_id)

    @property
    def store_id(self) -> str:
        """The storage's id (LoginAck.store_id): inbox seqs count in it."""
        return self.reads.store_id
