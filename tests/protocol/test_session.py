"""The server session state machine: login rules, limits, deadlines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chatplane.protocol.errors import ErrorCode
from chatplane.protocol.session import Phase, ServerSession, SessionLimits
from chatplane.v1 import frames_pb2 as pb

LIMITS = SessionLimits(rate_per_s=10, burst=5, heartbeat_interval_ms=1000,
                       login_timeout_ms=2000, max_refusals=3)


def out_frames(session: ServerSession) -> list[pb.Frame]:
    result = []
    for data in session.data_to_send():
        frame = pb.Frame()
        frame.ParseFromString(data)
        result.append(frame)
    return result


def login(session: ServerSession, now: float = 0) -> None:
    requests = session.receive(pb.Frame(id=1, login=pb.Login(token="t")).SerializeToString(), now)
    assert [r.kind for r in requests] == ["login"]
    session.accept_login(1, "u", "d", pb.LoginAck(user_id="u"))


def test_only_login_before_login() -> None:
    session = ServerSession(LIMITS, 0)
    assert session.receive(pb.Frame(id=4, send=pb.Send()).SerializeToString(), 1) == []
    (error,) = out_frames(session)
    assert error.id == 4 and error.error.code == ErrorCode.NOT_LOGGED_IN and error.error.fatal
    assert session.closed


def test_requests_pipelined_behind_login_are_served_after_it() -> None:
    session = ServerSession(LIMITS, 0)
    session.receive(pb.Frame(id=1, login=pb.Login(token="t")).SerializeToString(), 0)
    assert session.receive(pb.Frame(id=2, sync=pb.SyncRequest()).SerializeToString(), 1) == []
    held = session.accept_login(1, "u", "d", pb.LoginAck())
    assert [(r.id, r.kind) for r in held] == [(2, "sync")]
    assert session.phase is Phase.ACTIVE


def test_second_login_is_refused_without_closing() -> None:
    session = ServerSession(LIMITS, 0)
    login(session)
    session.data_to_send()
    session.receive(pb.Frame(id=2, login=pb.Login(token="t")).SerializeToString(), 1)
    (error,) = out_frames(session)
    assert error.error.code == ErrorCode.ALREADY_LOGGED_IN and not session.closed


def test_rate_limit_refuses_then_closes() -> None:
    session = ServerSession(LIMITS, 0)
    login(session)
    session.data_to_send()
    heartbeat = pb.Frame(id=3, heartbeat=pb.Heartbeat()).SerializeToString()
    for _ in range(4):  # the burst left after the login
        session.receive(heartbeat, 0)
    assert all(f.WhichOneof("body") == "heartbeat_ack" for f in out_frames(session))
    for _ in range(3):
        session.receive(heartbeat, 0)
    assert [f.error.code for f in out_frames(session)] == [ErrorCode.RATE_LIMITED] * 3
    assert not session.closed
    session.receive(heartbeat, 0)
    assert session.closed
    session.receive(heartbeat, 10_000)  # refilled, but closed is closed
    assert out_frames(session)[-1].error.fatal


def test_tokens_refill_with_time() -> None:
    session = ServerSession(LIMITS, 0)
    login(session)
    heartbeat = pb.Frame(id=3, heartbeat=pb.Heartbeat()).SerializeToString()
    for i in range(100):  # 10/s allowed: one every 100 ms is fine forever
        session.receive(heartbeat, 100.0 * (i + 1))
    assert not any(f.WhichOneof("body") == "error" for f in out_frames(session))


def test_deadlines() -> None:
    session = ServerSession(LIMITS, 0)
    session.tick(1999)
    assert not session.closed
    session.tick(2001)
    assert session.closed and session.close_code is ErrorCode.NOT_LOGGED_IN
    active = ServerSession(LIMITS, 0)
    login(active)
    active.tick(2999)
    assert not active.closed
    active.tick(3001)
    assert active.closed and active.close_code is ErrorCode.HEARTBEAT_TIMEOUT


def test_unsupported_version() -> None:
    session = ServerSession(LIMITS, 0)
    session.receive(pb.Frame(id=1, login=pb.Login(protocol_version=9)).SerializeToString(), 0)
    assert out_frames(session)[0].error.code == ErrorCode.UNSUPPORTED_VERSION
    assert session.closed


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=30))
def test_any_byte_sequence_yields_errors_never_exceptions(payloads: list[bytes]) -> None:
    session = ServerSession(SessionLimits(max_frame_bytes=150), 0)
    for i, payload in enumerate(payloads):
        for request in session.receive(payload, float(i)):
            if request.kind == "login":
                session.accept_login(request.id, "u", "d", pb.LoginAck())
    for frame in out_frames(session):
        assert frame.WhichOneof("body") in ("error", "heartbeat_ack", "login_ack")
    if session.closed:
        assert session.close_code is not None
