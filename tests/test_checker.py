"""The delivery checker catches each failure kind, and passes a clean run."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatplane.checker import DeliveryChecker, SeqRanges, Verdict

CONV = "d:alice:bob"


def _setup(n: int = 5) -> DeliveryChecker:
    """alice (1 device) sends n messages to bob (2 devices); all acked."""
    c = DeliveryChecker()
    for user in ("alice", "bob"):
        c.add_member(CONV, user)
    c.add_device("alice", "a1")
    c.add_device("bob", "b1")
    c.add_device("bob", "b2")
    for seq in range(1, n + 1):
        c.record_ack("alice", "a1", CONV, seq, f"m{seq}")
    return c


def _deliver(c: DeliveryChecker, user: str, device: str, seqs: list[int]) -> None:
    for seq in seqs:
        c.record_receipt(user, device, CONV, seq, f"m{seq}")


def _deliver_all(c: DeliveryChecker, seqs: list[int], skip: str = "") -> None:
    for user, device in (("alice", "a1"), ("bob", "b1"), ("bob", "b2")):
        if device != skip:
            _deliver(c, user, device, seqs)


def _device(v: Verdict, device: str) -> dict[str, int]:
    (dv,) = [d for d in v.devices if d.device == device]
    return {k: getattr(dv, k) for k in v.totals}


def test_clean_run_passes() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5])
    v = c.verdict()
    assert v.ok, v.summary()
    assert v.acked == 5
    assert v.received == 15
    assert v.same_order
    assert all(d.expected == 5 and d.received == 5 for d in v.devices)
    assert v.to_dict()["failed_devices"] == []


def test_lost_is_caught() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b2")
    _deliver(c, "bob", "b2", [1, 2, 3])
    v = c.verdict()
    assert not v.ok
    assert _device(v, "b2")["lost"] == 2
    assert _device(v, "b1")["lost"] == 0
    assert v.totals["lost"] == 2
    assert v.totals["gaps"] == 0  # a missing tail is loss, not a gap


def test_device_that_got_nothing_loses_everything() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b2")
    v = c.verdict()
    assert _device(v, "b2")["lost"] == 5


def test_own_sends_must_reach_the_sender_too() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="a1")
    assert c.verdict().totals["lost"] == 5


def test_unacked_receipts_are_not_failures() -> None:
    c = _setup(3)  # 4 and 5 were delivered but the ack never reached alice
    _deliver_all(c, [1, 2, 3, 4, 5])
    v = c.verdict()
    assert v.ok, v.summary()
    assert v.acked == 3


def test_duplicate_is_caught() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b1")
    _deliver(c, "bob", "b1", [1, 2, 3, 3, 4, 5])
    v = c.verdict()
    assert _device(v, "b1")["duplicated"] == 1
    assert v.totals["reordered"] == 0
    assert not v.ok


def test_redelivery_of_an_old_message_is_a_duplicate_not_a_reorder() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b1")
    _deliver(c, "bob", "b1", [1, 2, 3, 4, 5, 2])
    d = _device(c.verdict(), "b1")
    assert d["duplicated"] == 1
    assert d["reordered"] == 0


def test_reorder_is_caught_and_breaks_same_order() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b2")
    _deliver(c, "bob", "b2", [1, 3, 2, 4, 5])
    v = c.verdict()
    assert _device(v, "b2")["reordered"] == 1
    assert v.totals["lost"] == 0
    assert v.totals["gaps"] == 0  # the hole was filled, late
    assert not v.same_order
    assert not v.ok


def test_gap_is_caught_even_when_unacked() -> None:
    c = _setup(0)  # nothing acked: only the stream's own shape is judged
    _deliver(c, "bob", "b1", [1, 2, 4, 5])
    v = c.verdict()
    assert _device(v, "b1")["gaps"] == 1
    assert v.totals["lost"] == 0
    assert not v.ok


def test_conflicting_message_at_a_seq_is_caught() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b2")
    for seq in range(1, 6):
        c.record_receipt("bob", "b2", CONV, seq, "other" if seq == 4 else f"m{seq}")
    v = c.verdict()
    assert _device(v, "b2")["conflicting"] == 1
    assert not v.same_order


def test_devices_disagreeing_without_acks_is_caught() -> None:
    c = _setup(0)
    c.record_receipt("bob", "b1", CONV, 1, "x")
    c.record_receipt("bob", "b2", CONV, 1, "y")
    v = c.verdict()
    assert v.totals["conflicting"] == 1
    assert not v.same_order


def test_two_acks_for_one_seq_is_a_conflict() -> None:
    c = _setup(1)
    c.record_ack("bob", "b1", CONV, 1, "another")
    assert c.verdict().totals["conflicting"] == 1


def test_foreign_conversation_is_caught() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5])
    c.record_receipt("bob", "b1", "d:alice:carol", 1, "secret")
    v = c.verdict()
    assert _device(v, "b1")["foreign"] == 1
    assert not v.ok


def test_conversations_are_judged_separately() -> None:
    c = DeliveryChecker()
    for conv in ("c1", "c2"):
        c.add_member(conv, "u")
        c.add_device("u", "d")
        for seq in (1, 2):
            c.record_ack("u", "d", conv, seq, f"{conv}-{seq}")
    # interleaving two conversations is fine as long as each is in order
    for conv, seq in (("c1", 1), ("c2", 1), ("c2", 2), ("c1", 2)):
        c.record_receipt("u", "d", conv, seq, f"{conv}-{seq}")
    assert c.verdict().ok


def test_merge_adds_up() -> None:
    a, b = _setup(), _setup()
    _deliver_all(a, [1, 2, 3, 4, 5])
    _deliver_all(b, [1, 2, 3, 4], skip="")
    v = Verdict.merge([a.verdict(), b.verdict()])
    assert v.acked == 10
    assert v.totals["lost"] == 3
    assert len(v.devices) == 6
    assert not v.ok
    assert "FAILED" in v.summary()


def test_samples_name_the_failures() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5], skip="b1")
    _deliver(c, "bob", "b1", [1, 2, 2, 3])
    (failed,) = c.verdict().to_dict()["failed_devices"]
    assert failed["device"] == "b1"
    assert any("duplicate" in s for s in failed["samples"])
    assert any("lost d:alice:bob#4" in s for s in failed["samples"])


@given(st.lists(st.integers(min_value=1, max_value=60), max_size=200))
def test_seq_ranges_behave_like_a_set(values: list[int]) -> None:
    ranges, plain = SeqRanges(), set()
    for v in values:
        assert ranges.add(v) == (v not in plain)
        plain.add(v)
    assert len(ranges) == len(plain)
    assert all(v in ranges for v in plain)
    assert all(v not in ranges for v in range(0, 62) if v not in plain)
    spans = ranges.ranges()
    assert all(lo <= hi for lo, hi in spans)
    assert all(spans[i][1] + 1 < spans[i + 1][0] for i in range(len(spans) - 1))
    if plain:
        assert ranges.holes() == max(plain) - min(plain) + 1 - len(plain)


@given(
    st.sets(st.integers(min_value=1, max_value=80)),
    st.sets(st.integers(min_value=1, max_value=80)),
)
def test_missing_from_counts_the_difference(have: set[int], want: set[int]) -> None:
    a, b = SeqRanges(), SeqRanges()
    for v in have:
        a.add(v)
    for v in want:
        b.add(v)
    samples: list[int] = []
    assert a.missing_from(b, samples) == len(want - have)
    assert samples == sorted(want - have)[: len(samples)]


def test_large_in_order_stream_is_cheap() -> None:
    c = DeliveryChecker()
    c.add_member("c", "u")
    c.add_device("u", "d")
    n = 200_000
    for seq in range(1, n + 1):
        c.record_ack("u", "d", "c", seq, str(seq))
        c.record_receipt("u", "d", "c", seq, str(seq))
    assert c.verdict().ok


def test_history_page_that_matches_passes() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5])
    assert c.check_history("bob", "b1", CONV, [(s, f"m{s}") for s in (3, 4, 5)]) == 0
    assert c.verdict().ok


def test_history_hole_repeat_and_wrong_message_are_caught() -> None:
    c = _setup()
    _deliver_all(c, [1, 2, 3, 4, 5])
    assert c.check_history("bob", "b1", CONV, [(1, "m1"), (2, "m2"), (4, "m4")]) == 1
    assert c.check_history("bob", "b2", CONV, [(2, "m2"), (2, "m2")]) == 1
    assert c.check_history("alice", "a1", CONV, [(4, "m4"), (5, "other")]) == 1
    v = c.verdict()
    assert v.totals["history"] == 3
    assert not v.ok
    (b1,) = [d for d in v.to_dict()["failed_devices"] if d["device"] == "b1"]
    assert any("#4 after #2" in s for s in b1["samples"])


def test_sends_sequenced_against_their_cid_order_are_counted_on_the_sender() -> None:
    c = DeliveryChecker()
    c.add_device("alice", "a1")
    c.add_member(CONV, "alice")
    # cids 1..4 got seqs 1, 3, 2, 4: cid 3 was sequenced before cid 2
    for cid, seq in ((1, 1), (2, 3), (3, 2), (4, 4)):
        c.record_ack("alice", "a1", CONV, seq, f"m{seq}", cid=cid)
    for seq in range(1, 5):
        c.record_receipt("alice", "a1", CONV, seq, f"m{seq}")
    v = c.verdict()
    assert v.totals["cid_order"] == 1 and not v.ok
    assert v.same_order  # every device still saw one order: the server's
    (device,) = v.devices
    assert device.cid_order == 1 and "cid order" in device.samples[0]


def test_a_resend_answered_with_its_original_ack_keeps_cid_order() -> None:
    c = DeliveryChecker()
    c.add_member(CONV, "alice")
    for cid, seq in ((1, 1), (2, 2), (2, 2), (3, 3)):
        c.record_ack("alice", "a1", CONV, seq, f"m{seq}", cid=cid)
    c.record_ack("alice", "a2", CONV, 4, "m4", cid=1)  # another device numbers its own
    assert c.verdict().totals["cid_order"] == 0
