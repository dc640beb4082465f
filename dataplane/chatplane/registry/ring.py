"""A consistent-hash ring: which im instance owns a conversation.

Each instance takes `vnodes` points on a 64-bit circle; a key belongs to the
first point clockwise from its hash. When an instance joins or leaves, only
the keys next to its points move. `owners(key)` lists every instance in ring
order from the owner, so a caller whose owner is unreachable tries the next
one (the one that will own the key once the dead one's TTL passes).

The ring routes; it is not the fence. Rings disagree for a moment when an
instance dies or joins, so the instance that appends takes the
conversation's lease in storage first, and storage refuses appends fenced
with an older epoch (im/leases.py, docs/cluster.md "Ownership").
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def ring_key(conversation_id: str) -> str:
    """A conversation's key on the ring. A user's event conversation
    ("u:<user>") goes with the user: the instance serving the user's requests
    owns it, so the events those requests make for the user stay local. A
    1:1 conversation ("d:<lo>:<hi>") goes with its first member: that
    instance also writes the member's inbox (im/inboxes.py), so a message
    has one of its two inbox entries written where it is sequenced, and
    needs no `Im.FanOut` call when the other member's inbox is there too
    (with two instances, half the messages instead of three in four)."""
    if conversation_id.startswith("u:"):
        return conversation_id[2:]
    if conversation_id.startswith("d:"):
        return conversation_id[2:].partition(":")[0]
    return conversation_id


class HashRing:
    def __init__(self, members: Iterable[str] = (), vnodes: int = 64) -> None:
        self.vnodes = vnodes
        self.members: frozenset[str] = frozenset()
        self._points: list[int] = []
        self._owners: list[str] = []
        self.update(members)

    def update(self, members: Iterable[str]) -> bool:
        """Set the members; True when they changed."""
        new = frozenset(members)
        if new == self.members:
            return False
        self.members = new
        pairs = sorted((_point(f"{m}#{i}"), m) for m in new for i in range(self.vnodes))
        self._points = [p for p, _ in pairs]
        self._owners = [m for _, m in pairs]
        return True

    def owners(self, key: str) -> list[str]:
        """Every member once, the key's owner first, then clockwise."""
        if not self._points:
            return []
        start = bisect.bisect(self._points, _point(key)) % len(self._points)
        seen: list[str] = []
        for i in range(len(self._owners)):
            owner = self._owners[(start + i) % len(self._owners)]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self.members):
                    break
        return seen

    def owner(self, key: str) -> str | None:
        owners = self.owners(key)
        return owners[0] if owners else None
