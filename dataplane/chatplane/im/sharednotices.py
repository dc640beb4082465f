"""A region's notices in its Redis, for a cluster per region on a shared CQL keyspace
(docs/cluster.md, "Regions"; regions/notices.py says what a notice is).

Every im of the region sequences the conversations it owns, so each adds its notices
here (`RedisNotices.add`: queued in commit order, written in that order by one task per
process; `flushed` returns once they are, and the send is acked after it), and any of
them answers a peer's `Region.Notify` from here, whichever im the peer's call reaches.
A notice's position is `INCR`ed by the script that appends it, so positions follow the
stream's order across ims.

The follower's cursor in each peer's notices lives here too (`RedisCursors`): the im
that runs the following (im/regionjobs.py) saves it after each batch, the next one
resumes from it. A lost Redis (FLUSHALL, a restart) draws a new stream id, so the
peers' followers start the new stream from its start and count what they missed
(`lost`), as when a `chatplane up` region restarts; a lost cursor replays what the
stream still holds, which writes nothing twice (an entry is found before it is
written, regions/notices.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from chatplane.regions import notices as region_notices
from chatplane.storage.base import StorageUnavailable
from chatplane.v1 import regions_pb2 as rpb

log = logging.getLogger("chatplane.im")

POLL_S = 0.05  # how often a served stream looks for notices other ims added
RETRY_S = 0.2  # a write Redis refused, tried again after

# KEYS: stream, head, stream id; ARGV: keep, a fresh stream id, then one notice each.
# The positions are the head's INCR, the entries' ids "<position>-0".
ADD = """
redis.call('SET', KEYS[3], ARGV[2], 'NX')
local p = 0
for i = 3, #ARGV do
  p = redis.call('INCR', KEYS[2])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], p .. '-0', 'n', ARGV[i])
end
return p
"""
# KEYS: stream, head, stream id; ARGV: after, limit, a fresh stream id
READ = """
redis.call('SET', KEYS[3], ARGV[3], 'NX')
local sid = redis.call('GET', KEYS[3])
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = head + 1
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local entries = redis.call('XRANGE', KEYS[1], (tonumber(ARGV[1]) + 1) .. '-0', '+',
                           'COUNT', ARGV[2])
return {sid, head, first, entries}
"""


def keys(region: str) -> list[str]:
    base = f"cp:region:{region}:notices"
    return [base, f"{base}:head", f"{base}:stream"]


class RedisNotices:
    """regions/notices.py `Notices`, kept in the region's Redis."""

    def __init__(self, redis: Redis, region: str, keep: int = region_notices.KEEP) -> None:
        self.redis = redis
        self.keys = keys(region)
        self.keep = keep
        self._queued: list[str] = []
        self._written = 0  # notices added by this process and written
        self._added = 0
        self._progress = asyncio.Event()  # set whenever a write lands (or fails)
        self._writer: asyncio.Task[None] | None = None
        self.write_retries = 0

    def add(self, conversation_id: str, epoch: int, first_seq: int, last_seq: int,
            recipients: Sequence[str]) -> None:
        self._queued.append(json.dumps([conversation_id, epoch, first_seq, last_seq,
                                        list(recipients)]))
        self._added += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Writes the queue in order, a batch per script call, until it is empty."""
        while self._queued:
            batch = self._queued[:region_notices.BATCH]
            try:
                await self.redis.eval(ADD, 3, *self.keys, self.keep, uuid.uuid4().hex[:16],
                                      *batch)
            except (RedisError, OSError) as exc:
                self.write_retries += 1
                log.warning("notices not written to Redis yet: %s", exc)
                await asyncio.sleep(RETRY_S)
                continue
            del self._queued[:len(batch)]
            self._written += len(batch)
            event, self._progress = self._progress, asyncio.Event()
            event.set()

    async def flushed(self) -> None:
        """Returns once every notice added so far is written (StorageUnavailable after
        `bound_s`: the send is not acked, its resend tells the peers again)."""
        target = self._added
        deadline = time.monotonic() + region_notices.READ_BOUND_S
        while self._written < target:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageUnavailable("the region's notices not written (Redis)")
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                continue

    async def _read(self, after: int) -> tuple[str, int, int, list[rpb.Notice]]:
        sid, head, first, entries = await self.redis.eval(
            READ, 3, *self.keys, after, region_notices.BATCH, uuid.uuid4().hex[:16])
        notices = []
        for entry_id, fields in entries:
            data = dict(zip(fields[::2], fields[1::2], strict=True))
            conversation_id, epoch, first_seq, last_seq, recipients = json.loads(data["n"])
            notices.append(rpb.Notice(
                position=int(str(entry_id).split("-")[0]), conversation_id=conversation_id,
                epoch=epoch, first_seq=first_seq, last_seq=last_seq, recipients=recipients))
        return str(sid), int(head), int(first), notices

    async def serve(self, request: rpb.NotifyRequest) -> AsyncIterator[rpb.NoticeBatch]:
        """`Region.Notify` from the region's Redis: batches from the caller's cursor,
        a heartbeat when idle (an unreachable Redis ends the stream: the peer reopens)."""
        after, checked = request.after, False
        said = 0.0
        while True:
            try:
                sid, head, first, notices = await self._read(after)
            except (RedisError, OSError) as exc:
                raise StorageUnavailable(f"the region's notices not read (Redis): {exc}"
                                         ) from exc
            if not checked:  # the caller's cursor counts in its own stream only
                checked = True
                if request.stream != sid and after:
                    after = 0
                    continue
            if notices:
                after = notices[-1].position
                said = time.monotonic()
                yield rpb.NoticeBatch(notices=notices, head=head, stream=sid, first=first)
                continue
            if time.monotonic() - said >= region_notices.HEARTBEAT_S or not said:
                said = time.monotonic()
                yield rpb.NoticeBatch(head=head, stream=sid, first=first)
            progress = self._progress
            try:
                await asyncio.wait_for(progress.wait(), POLL_S)
            except TimeoutError:
                pass


class RedisCursors:
    """regions/notices.py `NoticeCursors` in this region's Redis."""

    def __init__(self, redis: Redis, region: str) -> None:
        self.redis = redis
        self.region = region

    def _key(self, peer: str) -> str:
        return f"cp:region:{self.region}:notices-of:{peer}"

    async def load(self, peer: str) -> tuple[str, int]:
        try:
            held = await self.redis.get(self._key(peer))
        except (RedisError, OSError) as exc:
            raise StorageUnavailable(f"notice cursor of {peer} not read: {exc}") from exc
        if not held:
            return "", 0
        stream, position = json.loads(held)
        return str(stream), int(position)

    async def save(self, peer: str, stream: str, position: int) -> None:
        try:
            await self.redis.set(self._key(peer), json.dumps([stream, position]))
        except (RedisError, OSError) as exc:
            raise StorageUnavailable(f"notice cursor of {peer} not saved: {exc}") from exc
