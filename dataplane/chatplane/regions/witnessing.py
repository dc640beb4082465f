"""The failover witness's rules, without I/O (docs/architecture.md, "Failover"): which
region holds a lease, which may ack alone, and which may take over which.

Per region the witness keeps a **lease** (its expiry on the witness's clock, in memory:
after a restart every known region is taken as leased for its TTL from the start, so a
restart never shortens a lease) and, durably: **alone** (the region may ack on its own
store alone, so it may hold acks no other region has) and **taken_by** (its homes were
taken over by that region: its renewals are refused until the taker says it caught up).

The grant rule (`take_over(asker, lost)`) grants only when
- the asker was not itself taken over (it may lack acks its taker made alone);
- `lost`'s lease expired here (so `lost`, which stops acking alone before its own
  conservative view of the lease ends, acks nothing alone any more);
- `lost` is not alone (it may hold acks the asker lacks: taking over would give their
  seqs to other messages);
- `lost` was not taken over by a third region.
A grant marks `lost` taken by the asker and the asker alone, in one durable step, so
of two regions cut from each other at most one ever takes the other over.

A region clears its own alone flag (`ALONE_CLEAR`) once its peers confirmed its log past
everything it acked alone; that also lifts the regions it had taken over, which from
then on renew again (they caught up on its log: the same confirmation).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Wish(enum.IntEnum):
    """What a renewal asks of the alone flag (witness.proto `AloneWish`)."""

    KEEP = 0
    SET = 1
    CLEAR = 2


@dataclass
class Record:
    """What the witness holds of one region."""

    ttl_s: float = 0.0  # durable: the lease a restarted witness assumes it still has
    alone: bool = False  # durable
    taken_by: str = ""  # durable
    taken_grant: int = 0  # durable: the grant that last took it over (0: never)
    expires: float = 0.0  # witness clock; not durable

    def view(self, now: float) -> dict[str, Any]:
        return {"lease_expires_in_s": round(max(0.0, self.expires - now), 3),
                "ttl_s": self.ttl_s, "alone": self.alone, "taken_by": self.taken_by,
                "taken_grant": self.taken_grant}


@dataclass(frozen=True)
class LeaseAnswer:
    held: bool
    alone: bool
    taken_by: str
    taken_grant: int
    reason: str = ""
    changed: tuple[str, ...] = ()  # regions whose durable record changed: store them


@dataclass(frozen=True)
class TakeoverAnswer:
    granted: bool
    grant: int = 0
    reason: str = ""
    changed: tuple[str, ...] = ()


@dataclass
class Grants:
    """Every region's record and the number of the last grant."""

    records: dict[str, Record] = field(default_factory=dict)
    grants: int = 0

    @classmethod
    def restored(cls, records: dict[str, Record], grants: int, now: float) -> Grants:
        """After a restart: every lease counts as renewed now (it may have been, just
        before the restart), so none expires early."""
        for record in records.values():
            record.expires = now + record.ttl_s
        return cls(records, grants)

    def renew(self, region: str, ttl_s: float, wish: Wish, now: float) -> LeaseAnswer:
        record = self.records.setdefault(region, Record())
        if record.taken_by:
            return LeaseAnswer(False, False, record.taken_by, record.taken_grant,
                               f"taken over by {record.taken_by} (grant {record.taken_grant})")
        changed: list[str] = []
        if ttl_s != record.ttl_s:
            record.ttl_s = ttl_s
            changed.append(region)
        if wish is Wish.SET and not record.alone:
            record.alone = True
            changed.append(region)
        elif wish is Wish.CLEAR and record.alone:
            record.alone = False
            changed.append(region)
            for name, other in self.records.items():  # its takeovers caught up: lifted
                if other.taken_by == region:
                    other.taken_by = ""
                    changed.append(name)
        record.expires = max(record.expires, now + ttl_s)
        return LeaseAnswer(True, record.alone, "", record.taken_grant,
                           changed=tuple(dict.fromkeys(changed)))

    def take_over(self, asker: str, lost: str, now: float) -> TakeoverAnswer:
        if asker == lost:
            return TakeoverAnswer(False, reason="a region cannot take itself over")
        mine = self.records.setdefault(asker, Record())
        if mine.taken_by:
            return TakeoverAnswer(False, reason=f"{asker} itself was taken over by"
                                                f" {mine.taken_by}")
        theirs = self.records.setdefault(lost, Record())
        if theirs.taken_by == asker:  # asked again (a lost reply): the same grant
            return TakeoverAnswer(True, theirs.taken_grant)
        if theirs.taken_by:
            return TakeoverAnswer(False, reason=f"{lost} was taken over by {theirs.taken_by}")
        if now < theirs.expires:
            return TakeoverAnswer(False, reason=f"{lost} holds its lease for"
                                                f" {theirs.expires - now:.2f}s more")
        if theirs.alone:
            return TakeoverAnswer(False, reason=f"{lost} acked alone: it may hold acks"
                                                f" {asker} lacks")
        self.grants += 1
        theirs.taken_by, theirs.taken_grant = asker, self.grants
        mine.alone = True
        return TakeoverAnswer(True, self.grants, changed=(lost, asker))

    def view(self, now: float) -> dict[str, Any]:
        return {"grants": self.grants,
                "regions": {name: r.view(now) for name, r in sorted(self.records.items())}}
