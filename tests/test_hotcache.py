"""The hot tier: contiguous runs, ranges served only when whole, bounded size."""

from __future__ import annotations

from chatplane.im.hotcache import HotCache
from chatplane.storage.base import StoredMessage


def msg(conversation_id: str, seq: int) -> StoredMessage:
    return StoredMessage(conversation_id, seq, f"m{seq}", "u", "d", seq, "", 0)


def test_ranges_are_served_only_when_held_whole() -> None:
    cache = HotCache()
    for seq in range(5, 11):
        cache.add(msg("c", seq))
    got = cache.after("c", 6, limit=3)
    assert got is not None and [m.seq for m in got] == [7, 8, 9]
    got = cache.after("c", 4, limit=100, before_seq=8)
    assert got is not None and [m.seq for m in got] == [5, 6, 7]
    assert cache.after("c", 3, limit=10) is None  # 4 is not held
    assert cache.after("other", 0, limit=10) is None
    got = cache.after("c", 10, limit=10)
    assert got == []  # nothing newer: held (the run reaches the head)


def test_a_gap_restarts_the_run_and_size_is_bounded() -> None:
    cache = HotCache(max_messages=10)
    for seq in (1, 2, 3, 7):
        cache.add(msg("a", seq))
    assert cache.after("a", 0, 10) is None and [m.seq for m in cache.after("a", 6, 10) or []] == [7]
    for seq in range(1, 11):
        cache.add(msg("b", seq))
    assert len(cache) <= 10 and cache.after("a", 6, 10) is None  # "a" was evicted first
