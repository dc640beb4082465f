"""Token revocations as each process holds them: a small in-memory list,
refreshed from where they are kept, and the Redis copy a cluster's gateways read.

A revocation says "tokens of this user on this device issued before this
time are no longer good" (`storage.base.Revocation`; `*` for every user or
every device). Storage is the authority (the admin API writes it). How a
process learns of new ones, within `tokens.session_check_s`:
  - `chatplane up`: polls its storage (one small SELECT);
  - the im tier: writes storage and, at once and again at every poll, the
    Redis hash below (so a Redis that lost its keys is refilled);
  - the gateway tier: polls that hash (gateways have no storage).
Every copy merges by keeping the highest cutoff, so a stale or partial read
never un-revokes anything.

Redis key:
  cp:revocations   hash   "<user>\\x1f<device>" -> before_ms
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from chatplane.auth import Identity
from chatplane.storage.base import ANY, Revocation, StorageError
from chatplane.supervision import Supervisor

log = logging.getLogger("chatplane.revocations")

REDIS_KEY = "cp:revocations"
Source = Callable[[], Awaitable[list[Revocation]]]


class RevocationList:
    """(user, device) -> cutoff; `revoked(identity)` is a few dict lookups."""

    def __init__(self) -> None:
        self._cutoffs: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._cutoffs)

    def merge(self, rows: Iterable[Revocation]) -> list[Revocation]:
        """Take rows in; returns those that raised a cutoff (what is new)."""
        raised = []
        for row in rows:
            key = (row.user_id, row.device_id)
            if row.before_ms > self._cutoffs.get(key, 0):
                self._cutoffs[key] = row.before_ms
                raised.append(row)
        return raised

    def cutoff(self, user_id: str, device_id: str) -> int:
        """Tokens of (user, device) issued before this are revoked (0: none)."""
        get = self._cutoffs.get
        return max(get((user_id, device_id), 0), get((user_id, ANY), 0), get((ANY, ANY), 0))

    def revoked(self, identity: Identity) -> bool:
        return identity.issued_at_ms < self.cutoff(identity.user_id, identity.device_id)


def parse_before(value: str | int | float) -> int:
    """A cutoff given as epoch seconds or an ISO 8601 time -> epoch ms.
    Raises ValueError with what it expects."""
    if isinstance(value, bool):
        raise ValueError("before: epoch seconds or an ISO 8601 time")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        seconds = _seconds(text)
    if not 0 < seconds < 2**33:  # finite, after 1970 and before the year 2242
        raise ValueError(f"before: {value!r} is out of range")
    return int(seconds * 1000)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"before: {text!r} is neither epoch seconds nor an ISO 8601 time"
                         ) from None
    if moment.tzinfo is None:
        raise ValueError(f"before: {text!r} has no time zone (add Z or +00:00)")
    return moment.timestamp()


def _field(row: Revocation) -> str:
    return f"{row.user_id}\x1f{row.device_id}"


async def write_redis(redis: aioredis.Redis, rows: list[Revocation]) -> None:
    if rows:
        await redis.hset(REDIS_KEY, mapping={_field(r): str(r.before_ms) for r in rows})


async def read_redis(redis: aioredis.Redis) -> list[Revocation]:
    rows = []
    for field, value in (await redis.hgetall(REDIS_KEY)).items():
        field, value = str(field), str(value)  # the registry's clients decode responses
        user, sep, device = field.partition("\x1f")
        if sep and value.isdigit():
            rows.append(Revocation(user, device, int(value)))
    return rows


class RevocationWatcher:
    """Polls `source` every `interval_s`, merges into `revocations`, and hands
    what is new to `on_new` (the gateway closes the sessions it revokes)."""

    def __init__(self, revocations: RevocationList, source: Source, interval_s: float,
                 on_new: Callable[[list[Revocation]], object],
                 also: Callable[[list[Revocation]], Awaitable[None]] | None = None) -> None:
        self.revocations = revocations
        self.source = source
        self.interval_s = interval_s
        self.on_new = on_new
        self.also = also  # the im tier: copy every row read to Redis
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        try:
            rows = await self.source()
            if self.also is not None:
                await self.also(rows)
        except (StorageError, RedisError, OSError) as exc:
            self.failures += 1
            log.warning("revocations not refreshed: %s", exc)
            return
        new = self.revocations.merge(rows)
        if new:
            self.on_new(new)

    async def start(self, supervisor: Supervisor) -> None:
        """First poll before serving (a revoked token must not slip in at a
        restart), then one every interval, supervised."""
        await self.poll()
        self._task = supervisor.spawn("revocation-watcher", self._run)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
