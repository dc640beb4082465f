"""Client inbox cursor: any mix of duplicates and reordering comes out exactly
once, in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatplane.delivery.sync import InboxCursor


@given(st.integers(1, 60).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(1, n), min_size=0, max_size=3 * n),
                        st.permutations(range(1, n + 1)))))
def test_exactly_once_in_order(case: tuple[int, list[int], list[int]]) -> None:
    n, dups, order = case
    cursor: InboxCursor[int] = InboxCursor()
    delivered: list[int] = []
    for seq in [*order, *dups]:
        delivered += cursor.accept(seq, seq)
    assert delivered == list(range(1, n + 1))
    assert cursor.have == n and not cursor.gap


def test_gap_is_reported_until_filled() -> None:
    cursor: InboxCursor[str] = InboxCursor(have=10)
    assert cursor.accept(12, "b") == [] and cursor.gap
    assert cursor.accept(10, "old") == [] and cursor.duplicates == 1
    assert cursor.accept(11, "a") == ["a", "b"] and not cursor.gap


def test_buffer_is_bounded() -> None:
    cursor: InboxCursor[int] = InboxCursor(max_buffered=3)
    for seq in range(2, 10):
        cursor.accept(seq, seq)
    assert cursor.accept(1, 1) == [1, 2, 3, 4]  # the rest was dropped: sync brings it
    assert cursor.gap is False and cursor.have == 4


def test_conversation_order_pushes_in_order_need_no_pull() -> None:
    from chatplane.delivery.sync import ConversationOrder

    order: ConversationOrder[int] = ConversationOrder()
    assert order.offer("g", 5, 5, from_inbox=True) == [5]  # the join event starts it
    for seq in (6, 7):
        assert order.offer("g", seq, seq, from_inbox=False) == [seq]
        order.saw_head("g", seq)
        assert not order.wants
    order.saw_head("g", 9)  # a notice: pull after 7
    assert order.wants == {"g": 7}
    assert order.pulled("g", [(8, 8), (9, 9)]) == [8, 9] and not order.wants


def test_conversation_order_jumps_ranges_it_may_not_see() -> None:
    from chatplane.delivery.sync import ConversationOrder

    order: ConversationOrder[int] = ConversationOrder()
    order.offer("g", 1, 1, from_inbox=True)
    assert order.offer("g", 3, 3, from_inbox=False) == [] and order.wants == {"g": 1}
    # seq 2 exists, but the server skips it for this member (left, then rejoined at 3)
    assert order.pulled("g", [(3, 3), (4, 4)]) == [3, 4]
    assert order.offer("g", 2, 2, from_inbox=False) == []  # stale: already past


def test_pushes_before_the_start_wait_for_it() -> None:
    from chatplane.delivery.sync import ConversationOrder

    order: ConversationOrder[int] = ConversationOrder()
    assert order.offer("g", 11, 11, from_inbox=False) == []  # where does it start?
    assert order.start("g", 9) == [] and order.wants == {"g": 9}
    assert order.pulled("g", [(10, 10), (11, 11)]) == [10, 11]


@given(st.data())
def test_conversation_order_any_interleaving_is_exactly_once_in_order(data: st.DataObject) -> None:
    """A group of n messages reaches the client in any mix of pushes (any
    order, duplicates, losses) and pull answers; with pulls served from the
    truth, the client delivers seqs start..n exactly once, in order."""
    from chatplane.delivery.sync import ConversationOrder

    n = data.draw(st.integers(1, 40))
    start = data.draw(st.integers(1, n))  # the member joined here (via the inbox)
    order: ConversationOrder[int] = ConversationOrder()
    delivered = order.offer("g", start, start, from_inbox=True)
    pushes = data.draw(st.lists(st.integers(1, n), max_size=3 * n))
    for seq in pushes:
        delivered += order.offer("g", seq, seq, from_inbox=False)
        if data.draw(st.booleans()):
            order.saw_head("g", seq)
        while order.wants and data.draw(st.booleans()):
            after = order.wants["g"]
            page = [(s, s) for s in range(max(after, start - 1) + 1, min(after + 5, n) + 1)]
            delivered += order.pulled("g", page)
    order.saw_head("g", n)  # the final notice always comes (the batcher's last flush)
    for _ in range(2 * n + 2):
        if not order.wants:
            break
        after = order.wants["g"]
        delivered += order.pulled("g", [(s, s) for s in range(after + 1, min(after + 5, n) + 1)])
    assert delivered == list(range(start, n + 1))
