"""`gateway/deadlines.py` and `ServerSession.check_due_ms`: a connection is
looked at when one of its deadlines could have passed, and a sweep over the
buckets closes every session in the same round as ticking every session in
every round would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatplane.gateway.deadlines import DeadlineBuckets
from chatplane.protocol.session import ServerSession, SessionLimits
from chatplane.v1 import frames_pb2 as pb

LIMITS = SessionLimits(heartbeat_interval_ms=400, login_timeout_ms=600)
ROUND_MS = 1000


def test_buckets_give_back_what_is_due_in_order() -> None:
    buckets: DeadlineBuckets[str] = DeadlineBuckets()
    buckets.add("late", 5_500)
    buckets.add("soon", 1_200)
    buckets.add("first", 100)
    assert buckets.pop_due(50) == ["first"]
    assert buckets.pop_due(999) == []
    assert buckets.pop_due(1_999) == ["soon"]
    assert buckets.pop_due(4_000) == []
    assert buckets.pop_due(9_000) == ["late"]
    assert len(buckets) == 0


def test_an_item_put_back_while_its_bucket_is_emptied_waits_for_the_next() -> None:
    buckets: DeadlineBuckets[str] = DeadlineBuckets()
    buckets.add("a", 3_100)
    assert buckets.pop_due(3_050) == ["a"]
    buckets.add("a", 3_900)  # in the second just swept: the next sweep
    buckets.add("b", 2_000)  # so is a time already past
    assert buckets.pop_due(3_999) == []
    assert buckets.pop_due(4_050) == ["a", "b"]


def login(session: ServerSession, now: float) -> None:
    session.receive(pb.Frame(id=1, login=pb.Login(token="t")).SerializeToString(), now)
    session.accept_login(1, "u", "d", pb.LoginAck(user_id="u"))


# a client's life: opens at 0, maybe logs in, then sends heartbeats at these times
lives = st.tuples(st.one_of(st.none(), st.integers(0, 900)),
                  st.lists(st.integers(0, 8_000), max_size=12).map(sorted))


def play(login_at: int | None, frames: list[int], round_offset: int, bucketed: bool) -> float | None:
    """Sweep rounds every second; returns when the session was found closed."""
    session = ServerSession(LIMITS, 0)
    buckets: DeadlineBuckets[ServerSession] = DeadlineBuckets()
    due = session.check_due_ms()
    assert due is not None
    buckets.add(session, due)
    events = sorted([(t, "frame") for t in frames if login_at is not None and t >= login_at]
                    + ([(login_at, "login")] if login_at is not None else []))
    now = round_offset
    while now < 12_000:
        for t, kind in [e for e in events if e[0] <= now]:
            if session.closed:
                break
            if kind == "login":
                login(session, t)
            else:
                session.receive(pb.Frame(id=2, heartbeat=pb.Heartbeat()).SerializeToString(), t)
        events = [e for e in events if e[0] > now]
        targets = buckets.pop_due(now) if bucketed else [session]
        for s in targets:
            s.tick(now)
            if bucketed and (nxt := s.check_due_ms()) is not None:
                buckets.add(s, nxt)
        if session.closed:
            return now
        now += ROUND_MS
    return None


@settings(max_examples=300, deadline=None)
@given(lives, st.integers(0, ROUND_MS - 1))
def test_buckets_close_a_session_in_the_same_round_as_ticking_everything(
        life: tuple[int | None, list[int]], round_offset: int) -> None:
    login_at, frames = life
    assert play(login_at, frames, round_offset, bucketed=True) == \
        play(login_at, frames, round_offset, bucketed=False)


@settings(max_examples=300, deadline=None)
@given(lives, st.integers(0, 12_000))
def test_no_deadline_passes_before_check_due(life: tuple[int | None, list[int]], at: int) -> None:
    login_at, frames = life
    session = ServerSession(LIMITS, 0)
    if login_at is not None and login_at < at:
        login(session, login_at)
        for t in frames:
            if login_at <= t < at:
                session.receive(pb.Frame(id=2, heartbeat=pb.Heartbeat()).SerializeToString(), t)
    due = session.check_due_ms()
    assert due is not None
    session.tick(min(at, due))
    assert not session.closed
