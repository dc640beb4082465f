"""Large-group push pacing: quiet groups push at once, busy ones batch, and
overflow becomes a head notice; the head always reaches the members."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatplane.delivery.fanout import GroupBatcher


def test_quiet_group_pushes_each_message_at_once() -> None:
    batcher: GroupBatcher[int] = GroupBatcher(interval_ms=100)
    for i, t in enumerate((0, 150, 400), start=1):
        flush = batcher.offer(i, i, t)
        assert flush is not None and flush.messages == [i] and flush.head_seq == i


def test_busy_group_batches_per_interval() -> None:
    batcher: GroupBatcher[int] = GroupBatcher(interval_ms=100)
    assert batcher.offer(1, 1, 0) is not None
    assert batcher.offer(2, 2, 10) is None and batcher.offer(3, 3, 20) is None
    assert batcher.due(99) is None and batcher.deadline() == 100
    flush = batcher.due(100)
    assert flush is not None and flush.messages == [2, 3] and flush.head_seq == 3
    assert batcher.deadline() is None


def test_messages_during_a_running_push_wait_for_one_batch() -> None:
    batcher: GroupBatcher[int] = GroupBatcher(interval_ms=100)
    assert batcher.offer(1, 1, 0) is not None
    # the push of seq 1 is still going 500 ms later: nothing goes out on its own
    assert batcher.offer(2, 2, 500, busy=True) is None
    assert batcher.offer(3, 3, 510, busy=True) is None
    flush = batcher.due(600)
    assert flush is not None and flush.messages == [2, 3] and flush.head_seq == 3


def test_overflow_becomes_a_head_notice() -> None:
    batcher: GroupBatcher[int] = GroupBatcher(interval_ms=100, max_messages=2)
    batcher.offer(1, 1, 0)
    for seq in (2, 3, 4):
        assert batcher.offer(seq, seq, 1) is None
    flush = batcher.due(100)
    assert flush is not None and flush.messages == [] and flush.head_seq == 4


@given(st.lists(st.tuples(st.integers(0, 50), st.booleans()), max_size=60))
def test_every_message_or_its_head_reaches_members(steps: list[tuple[int, bool]]) -> None:
    batcher: GroupBatcher[int] = GroupBatcher(interval_ms=30, max_messages=5)
    now, seq, delivered, heads = 0.0, 0, [], [0]
    for gap, tick in steps:
        now += gap
        if tick:
            flush = batcher.due(now)
        else:
            seq += 1
            flush = batcher.offer(seq, seq, now)
        if flush is not None:
            delivered += flush.messages
            heads.append(flush.head_seq)
    final = batcher.due(now + 1000)
    if final is not None:
        delivered += final.messages
        heads.append(final.head_seq)
    assert heads[-1] == seq  # the last head told is the true head
    assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
