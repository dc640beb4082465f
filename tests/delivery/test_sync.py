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
