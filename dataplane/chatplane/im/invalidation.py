"""Cache invalidation across im instances: a Redis stream, versions on entries, a bound.

A change of membership, relation or conversation settings is announced on
one Redis stream in two steps around the storage write: `begin(kind, key)`
before it (if that cannot be published the change must not be made), then
`end(kind, key)` after it. Every instance reads the stream (`run`, a
supervised task) and drops what it caches for the key at either step; from
`begin` until `end` (or `bound_s`, if the writer died in between) the key is
not cached at all, so nothing read during the write outlives it.

Each cached entry carries the stream position it was loaded at (`stamp()`);
`valid(kind, key, stamp)` is false once an announcement for that key past
the stamp has been read. Why a stream and not pub/sub: an instance that was
cut off reads what it missed when it comes back, and if the stream was
trimmed past its position it knows and drops everything (`flushes`).

**The staleness bound.** An instance trusts its caches only while its reader
has been caught up with the stream within `bound_s` (each blocking read
lasts at most a third of it, so a quiet stream still proves liveness). So a
change is honoured everywhere once the announcement is read (milliseconds:
docs/benchmarks.md), and at the latest `bound_s` after it if the
announcement is lost to an instance (Redis unreachable, reader stalled),
because that instance stops using its caches. Time-to-live fallbacks on
entries are not needed.

`chatplane up` runs one im: `LocalInvalidations` drops at once in process,
with no Redis. Both are a `Versions` (what the im's caches use). A change made
through this instance drops its own entries when announced, not when read
back, so the instance that made a change never serves its old state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.metrics_core import Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from chatplane import metrics

log = logging.getLogger(__name__)

STREAM = "chatplane:invalidations"
KINDS = ("members", "relation", "settings")
KEPT = 100_000  # announcements the stream keeps (approximately): minutes of changes


def _position(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def pair_key(a: str, b: str) -> str:
    """The "relation" key of two users: one for both directions."""
    return f"{a}|{b}" if a <= b else f"{b}|{a}"


class Unannounced(Exception):
    """A change could not be announced: it must not be made (retriable)."""


class Versions(Protocol):
    """What the im's caches need (im/membership.py, im/social.py): a stamp for
    an entry loaded now, whether an entry may be used, announcements around
    a change, and callbacks that drop entries."""

    def on(self, kind: str, drop: Callable[[str], None], flush: Callable[[], None]) -> None: ...

    def stamp(self) -> str: ...

    def valid(self, kind: str, key: str, stamp: str) -> bool: ...

    async def begin(self, kind: str, key: str) -> None: ...

    async def end(self, kind: str, key: str) -> None: ...

    def families(self) -> Iterator[Metric]: ...


def _split(stamp: str) -> tuple[int, tuple[int, int]]:
    """(flush generation, stream position) of a stamp "<generation>:<id>"."""
    generation, _, position = stamp.partition(":")
    return int(generation), _position(position)


class LocalInvalidations:
    """One im instance (`chatplane up`): every change goes through this
    process, so it drops at once and versions are a counter; no Redis."""

    def __init__(self) -> None:
        self._version = 0
        self._floor = 0  # stamps below: refused (drops before it were forgotten)
        self._last_drop: dict[tuple[str, str], int] = {}
        self._pending: dict[tuple[str, str], int] = {}  # changes in flight per key
        self._drops: dict[str, Callable[[str], None]] = {}
        self.applied_count = 0

    def on(self, kind: str, drop: Callable[[str], None], flush: Callable[[], None]) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self._drops[kind] = drop

    def stamp(self) -> str:
        return str(self._version)

    def valid(self, kind: str, key: str, stamp: str) -> bool:
        entry = (kind, key)
        if self._pending.get(entry):
            return False
        version = int(stamp)
        return version >= self._floor and self._last_drop.get(entry, 0) <= version

    def _drop(self, kind: str, key: str) -> None:
        self._version += 1
        self.applied_count += 1
        if len(self._last_drop) > 4 * KEPT:  # forget them: what was loaded before is refused
            self._last_drop.clear()
            self._floor = self._version
        self._last_drop[(kind, key)] = self._version
        drop = self._drops.get(kind)
        if drop is not None:
            drop(key)

    async def begin(self, kind: str, key: str) -> None:
        self._pending[(kind, key)] = self._pending.get((kind, key), 0) + 1
        self._drop(kind, key)

    async def end(self, kind: str, key: str) -> None:
        left = self._pending.get((kind, key), 0) - 1
        if left > 0:
            self._pending[(kind, key)] = left
        else:
            self._pending.pop((kind, key), None)
        self._drop(kind, key)

    def families(self) -> Iterator[Metric]:
        yield metrics.counter("chatplane_im_invalidations_read_total",
                              "cache invalidations applied (announcements read)",
                              self.applied_count)


class Invalidations:
    def __init__(self, redis: Redis, *, bound_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if bound_s <= 0:
            raise ValueError("bound_s must be positive")
        self.redis = redis
        self.bound_s = bound_s
        self.clock = clock
        self.origin = uuid.uuid4().hex[:12]
        self._applied = "0-0"  # the last stream entry read
        self._caught_up_at = float("-inf")
        self._ordinal = 0  # how many entries the stream had added up to _applied
        self._last_drop: dict[tuple[str, str], tuple[int, int]] = {}
        self._pending: dict[tuple[str, str], float] = {}  # begun, not ended: until
        self._drops: dict[str, Callable[[str], None]] = {}
        self._flushes: list[Callable[[], None]] = []
        self.applied_count = 0
        self.announced = 0
        self._running = False
        self._started = False
        self.flushes = 0

    def on(self, kind: str, drop: Callable[[str], None], flush: Callable[[], None]) -> None:
        """What to call when `kind`'s entry for a key goes, and when all must."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self._drops[kind] = drop
        self._flushes.append(flush)

    # -- writers ----------------------------------------------------------------

    async def begin(self, kind: str, key: str) -> None:
        """Before the storage write; raises Unannounced if Redis did not take it."""
        try:
            await self._announce(kind, key, "begin")
        except (RedisError, OSError) as exc:
            raise Unannounced(f"cache invalidation not announced: {exc}") from exc

    async def end(self, kind: str, key: str) -> None:
        """After it, whatever it did; a failure is logged (begin's window
        expires after bound_s, and every instance reads storage until then)."""
        try:
            await self._announce(kind, key, "end")
        except (RedisError, OSError) as exc:
            log.warning("end of a change to %s %s not announced (its key stays uncached"
                        " for %.1f s): %s", kind, key, self.bound_s, exc)

    async def _announce(self, kind: str, key: str, step: str) -> None:
        stream_id: Any = await self.redis.xadd(
            STREAM, {"kind": kind, "key": key, "step": step, "origin": self.origin},
            maxlen=KEPT, approximate=True)
        self.announced += 1
        # this instance's own entries go now (the reader applies it again later)
        self._note(kind, key, step, _position(_as_str(stream_id)))

    # -- readers ----------------------------------------------------------------

    def fresh(self) -> bool:
        return self.clock() - self._caught_up_at <= self.bound_s

    def stamp(self) -> str:
        """The version to store with an entry loaded now: the flush generation
        and the stream position (an entry from before a flush is refused)."""
        return f"{self.flushes}:{self._applied}"

    def valid(self, kind: str, key: str, stamp: str) -> bool:
        """May an entry of `kind` for `key`, loaded at `stamp`, be used now?"""
        generation, position = _split(stamp)
        if not self.fresh() or generation != self.flushes:
            return False
        until = self._pending.get((kind, key))
        if until is not None:
            if until > self.clock():
                return False
            del self._pending[(kind, key)]
        dropped = self._last_drop.get((kind, key))
        return dropped is None or dropped <= position

    def lag_s(self) -> float:
        """How long ago the reader was last caught up (inf: never)."""
        return self.clock() - self._caught_up_at

    def families(self) -> Iterator[Metric]:
        lag = self.lag_s()
        yield metrics.gauge("chatplane_im_invalidation_lag_seconds",
                            "since the invalidation reader was last caught up (caches are"
                            " untrusted above the bound)", lag if lag != float("inf") else -1.0)
        yield metrics.gauge("chatplane_im_invalidation_bound_seconds",
                            "the staleness bound of the im's caches", self.bound_s)
        yield metrics.counter("chatplane_im_invalidations_read_total",
                              "cache invalidations applied (announcements read)",
                              self.applied_count)
        yield metrics.counter("chatplane_im_invalidations_announced_total",
                              "changes announced by this instance (begin and end)",
                              self.announced)
        yield metrics.counter("chatplane_im_invalidation_flushes_total",
                              "every cache dropped: announcements missed for good", self.flushes)

    async def _info(self) -> tuple[int, int, str]:
        """The stream's (entries ever added, length, last id), zeros if none."""
        try:
            info: Any = await self.redis.xinfo_stream(STREAM)
        except ResponseError:  # no stream yet (or any more)
            return 0, 0, "0-0"
        info = {_as_str(k): v for k, v in info.items()}
        return (int(info.get("entries-added", 0)), int(info.get("length", 0)),
                _as_str(info.get("last-generated-id", "0-0")))

    async def start_position(self) -> None:
        """Begin at the stream's end: nothing cached yet, nothing to drop."""
        self._ordinal, _, self._applied = await self._info()
        self._caught_up_at = self.clock()

    async def run(self) -> None:
        """Read and apply announcements until stopped (a supervised task); a
        restarted reader resumes where it stopped, so it reads what it missed."""
        if not self._started:
            await self.start_position()
            self._started = True
        block_ms = max(1, int(self.bound_s * 1000 / 3))
        self._running = True
        while self._running:
            started = self.clock()
            try:
                await self._check_gap()
                replies: Any = await self.redis.xread({STREAM: self._applied}, count=1000,
                                                 block=block_ms)
            except (RedisError, OSError) as exc:
                log.warning("invalidation stream unreadable (caches untrusted after %.1f s): %s",
                            self.bound_s, exc)
                await asyncio.sleep(min(0.5, self.bound_s / 3))
                continue
            streams: Any = replies or []
            for _, entries in streams:
                for stream_id, fields in entries:
                    self._apply(_as_str(stream_id), {_as_str(k): _as_str(v)
                                                     for k, v in fields.items()})
            self._caught_up_at = started  # everything announced before `started` is applied

    def stop(self) -> None:
        """Let `run` return after its current read (at most bound_s / 3)."""
        self._running = False

    async def _check_gap(self) -> None:
        """Drop everything if announcements we had not read are gone: trimmed
        away (fewer entries left than were added after our position), or the
        stream lost (a Redis restart without it: fewer ever added than we read)."""
        added, length, _ = await self._info()
        if added < self._ordinal:
            self.flush()
            self._applied, self._ordinal = "0-0", 0  # a new stream: read it from its start
        elif length < added - self._ordinal:
            self.flush()
            self._ordinal = added - length  # what is left is all past our position

    def flush(self) -> None:
        self.flushes += 1
        self._last_drop.clear()
        self._pending.clear()
        for flush in self._flushes:
            flush()

    def _apply(self, stream_id: str, fields: dict[str, str]) -> None:
        kind, key = fields.get("kind", ""), fields.get("key", "")
        self._applied = stream_id
        self._ordinal += 1
        self.applied_count += 1
        if kind not in KINDS:
            return
        if len(self._last_drop) > 4 * KEPT:  # forget old drops: a new generation
            self.flush()
        self._note(kind, key, fields.get("step", ""), _position(stream_id))

    def _note(self, kind: str, key: str, step: str, position: tuple[int, int]) -> None:
        """Drop `kind`'s entries for `key`, announced at `position`."""
        previous = self._last_drop.get((kind, key))
        if previous is None or previous < position:
            self._last_drop[(kind, key)] = position
        if step == "begin":
            self._pending[(kind, key)] = self.clock() + self.bound_s
        else:
            self._pending.pop((kind, key), None)
        drop = self._drops.get(kind)
        if drop is not None:
            drop(key)


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
