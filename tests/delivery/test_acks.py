"""Downlink window: retransmission with backoff, overflow to sync, give-up."""

from __future__ import annotations

from chatplane.delivery.acks import DownlinkWindow, Verdict


def test_entries_up_to_login_head_are_not_pushed() -> None:
    window: DownlinkWindow[str] = DownlinkWindow(acked=3, head=7)
    assert window.offer(7, "x", 0) == (False, Verdict.OK)
    assert window.offer(8, "y", 0) == (True, Verdict.OK)
    assert window.offer(8, "y", 0) == (False, Verdict.OK)  # never twice


def test_retransmits_unacked_with_backoff_until_acked() -> None:
    window: DownlinkWindow[int] = DownlinkWindow(0, 0, rto_ms=100, max_rto_ms=400, max_attempts=5)
    for seq in (1, 2, 3):
        window.offer(seq, seq, 0)
    assert window.due(99) == ([], Verdict.OK)
    assert window.due(100) == ([1, 2, 3], Verdict.OK)
    assert window.due(250) == ([], Verdict.OK)  # the timeout doubled to 200
    window.ack(2)
    assert window.due(300) == ([3], Verdict.OK)
    window.ack(3)
    assert window.unacked == 0 and window.next_deadline() is None
    assert window.retransmitted == 4


def test_gives_up_on_a_device_that_never_acks() -> None:
    window: DownlinkWindow[int] = DownlinkWindow(0, 0, rto_ms=10, max_rto_ms=10, max_attempts=2)
    window.offer(1, 1, 0)
    assert window.due(10)[1] is Verdict.OK
    assert window.due(20)[1] is Verdict.OK
    assert window.due(30) == ([], Verdict.GIVE_UP)


def test_overflow_asks_for_sync_and_resumes_after_catch_up() -> None:
    window: DownlinkWindow[int] = DownlinkWindow(0, 0, capacity=2)
    assert window.offer(1, 1, 0)[0] and window.offer(2, 2, 0)[0]
    assert window.offer(3, 3, 0) == (False, Verdict.SYNC_HINT)
    assert window.offer(4, 4, 0) == (False, Verdict.OK)  # hinted once; it syncs
    window.ack(2)
    assert window.offer(5, 5, 0) == (False, Verdict.OK)  # still behind 4
    window.ack(5)  # the sync brought it to 5
    assert window.offer(6, 6, 0) == (True, Verdict.OK)


def test_an_ack_past_every_entry_does_not_freeze_the_window() -> None:
    """Found by tests/fuzz: a PushAck of 2^63-1 made every later true ack look
    old, so the device's pushes were retransmitted until it was closed."""
    window: DownlinkWindow[int] = DownlinkWindow(0, 0, rto_ms=10, max_rto_ms=10, max_attempts=2)
    window.offer(1, 1, 0)
    window.ack(2**63 - 1)
    assert window.unacked == 0
    assert window.offer(2, 2, 0) == (True, Verdict.OK)
    window.ack(2)
    assert window.unacked == 0 and window.due(100) == ([], Verdict.OK)
