"""`sync` durability across the ims of a cluster region (docs/cluster.md, "Regions").

A peer region confirms how far it applied this region's log to whichever im its call
reaches (`Region.Applied`, or the cursor a `Replicate` stream opens from;
regions/durability.py), but the send waiting for that confirmation may be on another
im of the region. So every confirmation an im takes is written to the region's Redis
(the highest per peer: `cp:region:<region>:confirmed:<peer>`, raised only, by a script),
and every im reads those back every `poll_s` into its own `Durability`, which wakes the
sends it holds. A sync ack then costs the peer's apply plus at most one poll.

Redis holds no authority here: a confirmation read back is believed only up to this
region's log head (`Durability.applied`), and a lost key (a Redis restart) is written
again by the peer's next confirmation (it reports after each batch it applies); until
then sends wait, and fail UNAVAILABLE after the sync timeout like any unconfirmed send.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chatplane.regions.durability import Durability
from chatplane.storage.base import StorageError

log = logging.getLogger("chatplane.im")

POLL_S = 0.02
RETRY_S = 0.2
# SET the key to ARGV[1] unless it holds a higher position already
RAISE = """
local held = redis.call('GET', KEYS[1])
if (not held) or tonumber(held) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
"""


def key(region: str, peer: str) -> str:
    return f"cp:region:{region}:confirmed:{peer}"


class SharedConfirmations:
    def __init__(self, redis: Redis, region: str, durability: Durability,
                 poll_s: float = POLL_S) -> None:
        self.redis = redis
        self.durability = durability
        self.poll_s = poll_s
        self.keys = {peer: key(region, peer) for peer in durability.peers}
        self._pending: dict[str, int] = {}
        self._wake = asyncio.Event()
        self.written = 0  # confirmations written for the other ims
        durability.on_confirmed = self.note

    def note(self, peer: str, position: int) -> None:
        """A confirmation taken by this im: written for the others (the newest only)."""
        self._pending[peer] = max(position, self._pending.get(peer, 0))
        self._wake.set()

    async def run(self) -> None:
        await asyncio.gather(self._write(), self._read())

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            try:
                for peer, position in pending.items():
                    await self.redis.eval(RAISE, 1, self.keys[peer], position)  # type: ignore[misc]
                    self.written += 1
            except (RedisError, OSError) as exc:
                log.warning("confirmations not shared with the region's other ims yet: %s", exc)
                for peer, position in pending.items():
                    self.note(peer, position)
                await asyncio.sleep(RETRY_S)

    async def _read(self) -> None:
        peers = list(self.keys)
        while True:
            try:
                values = await self.redis.mget([self.keys[p] for p in peers])
            except (RedisError, OSError) as exc:
                log.debug("confirmations not read: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            try:
                for peer, value in zip(peers, values, strict=True):
                    if value is not None:
                        await self.durability.applied(peer, int(value), relay=False)
            except StorageError as exc:  # the log head not read: the next round
                log.debug("confirmations not checked: %s", exc)
            await asyncio.sleep(self.poll_s)
