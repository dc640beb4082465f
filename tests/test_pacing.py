"""The gateway's send pacing without sockets: the per-user bucket, the
in-flight cap, and the rule that a refused send is never overtaken."""

from __future__ import annotations

import pytest

from chatplane.gateway.admission import Admission
from chatplane.gateway.pacing import BLOCK_LAPSE_MS, SendGate, UserRates
from chatplane.protocol.errors import ErrorCode, ProtocolError


def refusal(gate: SendGate, cid: int, rates: UserRates, now: float, user: str = "u") -> int:
    with pytest.raises(ProtocolError) as err:
        gate.admit(cid, user, rates, now)
    return int(err.value.code)


def test_user_bucket_refills_at_the_rate_and_is_shared_by_devices() -> None:
    rates = UserRates(rate_per_s=10, burst=3)
    phone, laptop = SendGate(100), SendGate(100)
    for cid in (1, 2):
        phone.admit(cid, "u", rates, 0)
    laptop.admit(1, "u", rates, 0)
    assert refusal(laptop, 2, rates, 0) == ErrorCode.RATE_LIMITED
    SendGate(100).admit(1, "v", rates, 0)  # another user has its own bucket
    phone.admit(3, "u", rates, 100)  # 100 ms: one token back
    assert rates.refused == 1


def test_a_refused_cid_blocks_later_ones_until_it_comes_again() -> None:
    rates = UserRates(rate_per_s=1000, burst=1000)
    gate = SendGate(max_inflight=2)
    gate.admit(1, "u", rates, 0)
    gate.admit(2, "u", rates, 0)
    assert refusal(gate, 3, rates, 0) == ErrorCode.TOO_MANY_INFLIGHT
    gate.done()
    gate.done()
    assert refusal(gate, 4, rates, 1) == ErrorCode.RATE_LIMITED  # would overtake 3
    gate.admit(3, "u", rates, 2)
    gate.admit(4, "u", rates, 3)


def test_a_block_lapses_for_a_client_that_never_resends() -> None:
    rates = UserRates(rate_per_s=1000, burst=1000)
    gate = SendGate(max_inflight=1)
    gate.admit(1, "u", rates, 0)
    assert refusal(gate, 2, rates, 0) == ErrorCode.TOO_MANY_INFLIGHT
    gate.done()
    assert refusal(gate, 3, rates, BLOCK_LAPSE_MS / 2) == ErrorCode.RATE_LIMITED
    gate.admit(3, "u", rates, BLOCK_LAPSE_MS + 1)


def test_admission_caps_per_address_and_in_total() -> None:
    admission = Admission(max_total=3, max_per_ip=2, exempt="127.0.0.1/32")
    assert admission.admit("10.0.0.1") == admission.admit("10.0.0.1") == ""
    assert "per address" in admission.admit("10.0.0.1")
    assert admission.admit("127.0.0.1") == ""
    assert "maximum of 3" in admission.admit("10.0.0.2")
    admission.release("10.0.0.1")
    assert admission.admit("10.0.0.2") == ""
    assert admission.refused == 2 and admission.by_ip == {"10.0.0.1": 1, "127.0.0.1": 1,
                                                           "10.0.0.2": 1}
