"""The bounds table (protocol/bounds.py): complete over the proto, applied by
the session and by Im.Handle's admission, and printed in docs/protocol.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatplane.im import requests
from chatplane.protocol import bounds, jsonbounds
from chatplane.protocol.errors import ErrorCode
from chatplane.protocol.session import CLIENT_REQUESTS, ServerSession, SessionLimits
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb

DOCS = Path(__file__).parent.parent.parent / "docs"
UINT64 = 4  # FieldDescriptor.TYPE_UINT64
# bounded only by max_frame_bytes, or checked by the session itself (docs/protocol.md)
UNBOUNDED = {"send.payload", "heartbeat.client_time_ms", "login.protocol_version"}


def client_fields() -> list[tuple[str, object]]:
    return [(f"{kind}.{field.name}", field) for kind in sorted(CLIENT_REQUESTS | {"login", "heartbeat"})
            for field in type(getattr(pb.Frame(), kind)).DESCRIPTOR.fields]


def test_every_field_of_every_client_frame_has_a_rule() -> None:
    ruled = {f"{kind}.{rule.field}" for kind, rules in bounds.RULES.items() for rule in rules}
    missing = {name for name, _ in client_fields()} - ruled - UNBOUNDED
    assert not missing, f"fields with no bound: {sorted(missing)}"


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_every_uint64_field_stops_at_2_63_minus_1(value: int) -> None:
    for name, field in client_fields():
        if field.type != UINT64:  # type: ignore[attr-defined]
            continue
        kind, field_name = name.split(".")
        body_type = type(getattr(pb.Frame(), kind))
        named = {"conversation_id": "c"} if "conversation_id" in body_type.DESCRIPTOR.fields_by_name else {}
        body = body_type(**named, **{field_name: value})
        out = bounds.problem(kind, body, bounds.Bounds())
        assert out is not None and out.startswith(f"field {name}: above 2^63-1"), (name, out)
        body = body_type(**named, **{field_name: 2**63 - 1})
        out = bounds.problem(kind, body, bounds.Bounds()) or ""
        assert not out.startswith(f"field {name}:"), out


def login(session: ServerSession) -> None:
    session.receive(pb.Frame(id=1, login=pb.Login(token="t")).SerializeToString(), 0)
    session.accept_login(1, "u", "d", pb.LoginAck())
    session.data_to_send()


def replies(session: ServerSession) -> list[pb.Frame]:
    return [pb.Frame.FromString(data) for data in session.data_to_send()]


def test_the_session_refuses_out_of_bounds_requests_and_stays_open() -> None:
    session = ServerSession(SessionLimits(), 0)
    login(session)
    assert session.receive(pb.Frame(id=5, send=pb.Send(conversation_id="c", cid=2**64 - 1))
                           .SerializeToString(), 1) == []
    (error,) = replies(session)
    assert (error.id, error.error.code) == (5, ErrorCode.INVALID_ARGUMENT)
    assert error.error.message == "field send.cid: above 2^63-1" and not error.error.fatal
    assert not session.closed
    (request,) = session.receive(pb.Frame(id=6, send=pb.Send(conversation_id="c", cid=2**63 - 1))
                                 .SerializeToString(), 2)
    assert request.kind == "send"


def test_pipelined_requests_are_bounded_when_the_login_is_accepted() -> None:
    session = ServerSession(SessionLimits(), 0)
    session.receive(pb.Frame(id=1, login=pb.Login(token="t")).SerializeToString(), 0)
    session.receive(pb.Frame(id=2, history=pb.HistoryRequest(conversation_id="c", limit=201))
                    .SerializeToString(), 0)
    assert session.accept_login(1, "u", "d", pb.LoginAck()) == []
    error = replies(session)[-1]
    assert error.error.message == "field history.limit: above 200"


def test_a_login_out_of_bounds_is_refused_and_closed() -> None:
    session = ServerSession(SessionLimits(), 0)
    frame = pb.Frame(id=1, login=pb.Login(token="t", inbox_seq=2**63))
    assert session.receive(frame.SerializeToString(), 0) == []
    (error,) = replies(session)
    assert error.error.code == ErrorCode.INVALID_ARGUMENT and error.error.fatal
    assert error.error.message.startswith("field login.inbox_seq") and session.closed


def test_settings_feed_the_bounds() -> None:
    from chatplane import settings

    limits = settings.load({"limits": {"max_text_bytes": 10, "max_history_page": 300}},
                           environ={}).limits
    session = ServerSession(SessionLimits(bounds=bounds.Bounds.from_limits(limits)), 0)
    login(session)
    session.receive(pb.Frame(id=3, send=pb.Send(conversation_id="c", cid=1, text="x" * 11))
                    .SerializeToString(), 1)
    session.receive(pb.Frame(id=4, history=pb.HistoryRequest(conversation_id="c", limit=300))
                    .SerializeToString(), 1)
    (error,) = replies(session)
    assert error.error.message == "field send.text: 11 bytes, over 10"


def test_im_handle_admits_frames_from_another_tier_by_the_same_bounds() -> None:
    limits = bounds.Bounds()

    def admit(frame: bytes, user: str = "alice") -> pb.Frame:
        return requests.admit(spb.ClientRequest(user_id=user, device_id="d", frame=frame), limits)

    assert admit(b"\xff\xff").error.code == ErrorCode.BAD_FRAME
    huge = pb.Frame(id=9, sync=pb.SyncRequest(after_inbox_seq=2**64 - 1)).SerializeToString()
    refused = admit(huge)
    assert (refused.id, refused.error.code) == (9, ErrorCode.INVALID_ARGUMENT)
    assert refused.error.message == "field sync.after_inbox_seq: above 2^63-1"
    assert admit(pb.Frame(login=pb.Login()).SerializeToString()).error.code == ErrorCode.UNKNOWN_FRAME
    assert "handle.user_id" in admit(pb.Frame(friends=pb.FriendsRequest()).SerializeToString(),
                                     "u" * 65).error.message
    ok = pb.Frame(id=3, friends=pb.FriendsRequest()).SerializeToString()
    assert admit(ok).WhichOneof("body") == "friends"


def test_peer_calls_are_bounded() -> None:
    event = spb.AppendEventRequest(user_id="alice", device="im-1", cid=1, sent_at_ms=2**64 - 1,
                                   content_type="event/read")
    assert bounds.call_problem("append_event", event) == "field append_event.sent_at_ms: above 2^63-1"
    heads = spb.InboxHeadsRequest(user_ids=["u"] * (bounds.MAX_HEADS_PER_CALL + 1))
    assert "inbox_heads.user_ids" in (bounds.call_problem("inbox_heads", heads) or "")
    from chatplane.v1 import regions_pb2 as rpb
    hello = rpb.HelloRequest(region="us", nonce=b"n" * (bounds.MAX_NONCE_BYTES + 1))
    assert bounds.call_problem("hello", hello) == "field hello.nonce: 65 bytes, over 64"


def test_the_protocol_doc_lists_every_bound() -> None:
    doc = (DOCS / "protocol.md").read_text()
    for field, bound in bounds.table(bounds.Bounds()):
        assert f"| `{field}` | {bound} |" in doc, field
    for call, rules in bounds.CALL_RULES.items():
        for rule in rules:
            assert f"| `{call}.{rule.field}` | {rule.describe(bounds.Bounds())} |" in doc, call
    examples = [
        ("send", pb.Send(conversation_id="c", cid=2**64 - 1)),
        ("history", pb.HistoryRequest(conversation_id="c", limit=201)),
        ("group_create", pb.GroupCreate(members=[f"u{i}" for i in range(1001)])),
        ("friend_op", pb.FriendOp(action=9, user_id="bob")),
    ]
    for kind, body in examples:  # the doc's sample messages are the real ones
        assert bounds.problem(kind, body, bounds.Bounds()) in doc, kind


# -- JSON bodies (admin API, drain) ------------------------------------------------


@pytest.mark.parametrize(("text", "key", "why"), [
    ('{"ttl_s": true}', "ttl_s", "an integer in 1 .. 2592000, not true"),
    ('{"ttl_s": "60"}', "ttl_s", "not \"60\""),
    ('{"ttl_s": 60.0}', "ttl_s", "not 60.0"),
    ('{"ttl_s": 1e400}', "ttl_s", "not inf"),
    ('{"ttl_s": 99999999999999999999999}', "ttl_s", "an integer in 1 .. 2592000"),
    ('{"ttl_s": 0}', "ttl_s", "not 0"),
])
def test_json_integers_are_integers_in_range(text: str, key: str, why: str) -> None:
    with pytest.raises(bounds.BoundsError) as err:
        jsonbounds.integer(jsonbounds.parse_object(text), key, 1, jsonbounds.MAX_TTL_S)
    assert err.value.message.startswith(f"field {key}: ") and why in err.value.message


@pytest.mark.parametrize("text", ['{"rate": NaN}', '{"rate": Infinity}', '{"rate": -Infinity}',
                                  "[" * 100_000, "[1]", "nope", '"x"'])
def test_json_bodies_that_are_no_object_of_numbers_are_refused(text: str) -> None:
    with pytest.raises(bounds.BoundsError) as err:
        jsonbounds.parse_object(text)
    assert err.value.message.startswith("field body: ")


@given(st.one_of(st.booleans(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2),
                 st.floats(allow_nan=True, allow_infinity=True), st.integers()))
def test_drain_numbers_are_finite_positive_and_bounded(value: object) -> None:
    try:
        rate = jsonbounds.number({"rate": value}, "rate", jsonbounds.MAX_DRAIN_RATE, 500.0)
    except bounds.BoundsError as exc:
        assert exc.message.startswith("field rate: a number above 0 and at most 100000")
        return
    assert not isinstance(value, bool | str) and math.isfinite(rate)
    assert 0 < rate <= jsonbounds.MAX_DRAIN_RATE


@pytest.mark.parametrize(("environ", "says"), [
    ({"CHATPLANE_DRAIN_RATE": "inf"}, "drain.rate"),
    ({"CHATPLANE_DRAIN_DEADLINE_S": "nan"}, "drain.deadline_s"),
    ({"CHATPLANE_DRAIN_RATE": "1e9"}, "drain rate must be in (0, 100000]"),
    ({"CHATPLANE_MAX_HISTORY_PAGE": "50"}, "max_history_page must be at least 200"),
    ({"CHATPLANE_MAX_SYNC_PAGE": "100"}, "max_sync_page at least 500"),
])
def test_settings_that_would_break_the_bounds_stop_the_start(environ: dict[str, str],
                                                              says: str) -> None:
    from chatplane import settings

    with pytest.raises(settings.SettingsError) as err:
        settings.load(environ=environ)
    assert says in str(err.value)
