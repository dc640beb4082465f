"""The hot tier: contiguous runs, ranges served only when whole, bounded size."""

from __future__ import annotations

from chatplane.im.hotcache import HotCache
from chatplane.storage.base import StoredMessage
from tests.support import prom


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


def test_a_one_off_scan_does_not_evict_a_hot_conversation() -> None:
    cache = HotCache(max_messages=200)
    for seq in range(1, 51):  # a busy group: 50 messages, each read back
        cache.add(msg("hot", seq))
        cache.after("hot", seq - 1, 10)
    for i in range(1000):  # a broadcast: one message into each of 1,000 events conversations
        cache.add(msg(f"u:{i}", 1))
    got = cache.after("hot", 0, 100)
    assert got is not None and [m.seq for m in got] == list(range(1, 51))
    assert len(cache) <= 200 and cache.rejections > 0


def test_hits_misses_and_evictions_are_exposed() -> None:
    cache = HotCache(max_messages=10)
    for i in range(30):
        for _ in range(3):
            cache.add(msg(f"c{i}", cache.head(f"c{i}") + 1))
    cache.after("c29", 0, 5)
    cache.after("nowhere", 0, 5)
    values = prom.of(cache.families)
    assert values["chatplane_im_hot_misses_total"] == cache.misses >= 1
    assert values["chatplane_im_hot_evictions_total"] + values[
        "chatplane_im_hot_rejections_total"] > 0
    assert values["chatplane_im_hot_messages"] == len(cache) <= 10


def test_the_chosen_policy_beats_lru_on_a_skewed_workload() -> None:
    from chatplane.bench import hotcache

    requests = hotcache.zipf_requests(10_000, 1.1, 100_000, seed=7)
    rates = {name: hotcache.measure(name, 100, requests, 2_000, 200)["zipf_hit_rate"]
             for name in ("lru", "wtinylfu")}
    assert rates["wtinylfu"] > rates["lru"]


def test_a_hot_group_stays_in_the_conversation_cache_through_a_scan() -> None:
    """Conversations and member lists are under the same admission
    (im/membercache.py): a 10,000-member group read at every send stays while
    20,000 cold 1:1 chats are looked up once each; member ids stay bounded."""
    from chatplane.im.membercache import MemberCache

    cache: MemberCache[str] = MemberCache("conversation", capacity_ids=30_000)
    always = lambda _: True  # noqa: E731
    for _ in range(50):
        if cache.get("g:big", always) is None:
            cache.put("g:big", "the group", member_ids=10_000)
    for i in range(20_000):
        if cache.get(f"d:{i}", always) is None:
            cache.put(f"d:{i}", "a chat", member_ids=2)
    assert cache.get("g:big", always) == "the group"
    assert cache.member_ids <= 30_000 and len(cache) < 20_000
    assert cache.get("g:big", lambda _: False) is None  # a stale version is a miss
    cache.pop("g:big")
    assert cache.peek("g:big") is None
    values = prom.of(cache.families)
    assert values["chatplane_im_conversation_cache_hits_total"] == cache.hits >= 50
    assert values["chatplane_im_conversation_cache_misses_total"] == cache.misses >= 20_000
    assert values["chatplane_im_conversation_cache_evictions_total"] + values[
        "chatplane_im_conversation_cache_rejections_total"] > 0
    assert values["chatplane_im_conversation_cache_member_ids"] == cache.member_ids

