"""The client core with bytes only: no socket, no event loop (as websockets
tests its Protocol). Each test feeds server frames to
chatplane.protocol.clientsession and asserts on the frames it queues and the
events it reports."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatplane.protocol import clientsession as core
from chatplane.protocol.errors import ErrorCode
from chatplane.v1 import frames_pb2 as pb

HB_S = 1.0


def frames_out(session: core.ClientSession) -> list[pb.Frame]:
    return [pb.Frame.FromString(data) for data in session.data_to_send()]


def bodies(frames: list[pb.Frame]) -> list[str]:
    return [f.WhichOneof("body") or "" for f in frames]


def feed(session: core.ClientSession, frame: pb.Frame, now: float = 0.0) -> list[core.Event]:
    session.receive(frame.SerializeToString(), now)
    return session.events_received()


def logged_in(have: int = 0, store: str = "s1", head: int = 0, inflight: int = 0,
              rand: float = 0.5) -> core.ClientSession:
    session = core.ClientSession(inbox_seq=have, rand=lambda: rand)
    session.store_id = store
    session.login("tok", 0.0)
    [login] = frames_out(session)
    feed(session, pb.Frame(id=login.id, login_ack=pb.LoginAck(
        user_id="u", device_id="d", inbox_head=head, store_id=store,
        heartbeat_interval_ms=int(HB_S * 1000), max_inflight_sends=inflight)))
    return session


def entry(inbox_seq: int, seq: int, conversation: str = "d:a:b") -> pb.InboxEntry:
    return pb.InboxEntry(inbox_seq=inbox_seq, message=pb.Message(
        conversation_id=conversation, seq=seq, message_id=f"m{seq}", text=f"t{seq}"))


def test_login_carries_the_token_cursor_and_store_and_nothing_goes_before_the_ack() -> None:
    session = core.ClientSession(resume={"store_id": "s1", "inbox_seq": 4})
    session.send("d:a:b", "early", 0.0)
    session.login("secret", 0.0)
    [login] = frames_out(session)
    assert login.login.token == "secret"
    assert (login.login.inbox_seq, login.login.store_id) == (4, "s1")
    assert session.phase is core.Phase.LOGGING_IN
    events = feed(session, pb.Frame(id=login.id, login_ack=pb.LoginAck(
        user_id="u", device_id="d", inbox_head=6, store_id="s1", heartbeat_interval_ms=1000)))
    assert [type(e) for e in events] == [core.LoggedIn, core.SyncNeeded]
    assert not events[0].store_reset  # type: ignore[union-attr]
    [send] = frames_out(session)  # the pending send goes right after the ack
    assert send.send.text == "early" and send.id != login.id


@pytest.mark.parametrize("ack_store,head,reset", [("s1", 9, False), ("s2", 9, True),
                                                  ("s1", 3, True)])
def test_the_resume_decision_at_login(ack_store: str, head: int, reset: bool) -> None:
    session = core.ClientSession(resume={"store_id": "s1", "inbox_seq": 5,
                                         "conversations": {"d:a:b": 7}})
    session.login("t", 0.0)
    [login] = frames_out(session)
    [event, _] = feed(session, pb.Frame(id=login.id, login_ack=pb.LoginAck(
        inbox_head=head, store_id=ack_store, heartbeat_interval_ms=1000)))
    assert isinstance(event, core.LoggedIn) and event.store_reset is reset
    assert session.cursor.have == (0 if reset else 5)
    assert session.order.last == ({} if reset else {"d:a:b": 7})
    assert (session.store_id, session.store_resets) == (ack_store, int(reset))


@pytest.mark.parametrize("ack_region,kept", [("us", {"d:a:b": 7, "g:x": 3}), ("eu", {}),
                                             ("", {})])
def test_a_move_to_another_region_keeps_what_was_delivered_of_chats(
        ack_region: str, kept: dict[str, int]) -> None:
    """Failover: another region's store resyncs the inbox from 0, but 1:1 chats' and
    groups' seqs are common to every region, so what was delivered of them is not
    handed out again; events' seqs are per store. The same region with another store
    is a wiped store: everything starts over."""
    session = core.ClientSession(resume={"store_id": "s1", "region": "eu", "inbox_seq": 5,
                                         "conversations": {"d:a:b": 7, "g:x": 3, "u:a": 9}})
    session.login("t", 0.0)
    [login] = frames_out(session)
    feed(session, pb.Frame(id=login.id, login_ack=pb.LoginAck(
        inbox_head=9, store_id="s2", region=ack_region, heartbeat_interval_ms=1000)))
    assert session.cursor.have == 0 and session.store_resets == 1
    assert session.order.last == kept
    assert session.position()["region"] == (ack_region or "eu")
    session.events_received()
    session.accept_sync(pb.SyncResponse(entries=[entry(1, 7), entry(2, 8)], inbox_head=2), 0.0)
    delivered = session.events_received()
    seqs = [m.seq for e in delivered if isinstance(e, core.Delivered) for m in e.messages]
    assert seqs == ([8] if kept else [7, 8])


def test_a_refused_login_ends_with_its_error() -> None:
    session = core.ClientSession()
    session.login("bad", 0.0)
    [login] = frames_out(session)
    [ended] = feed(session, pb.Frame(id=login.id, error=pb.Error(
        code=int(ErrorCode.AUTH_FAILED), message="no", fatal=True)))
    assert isinstance(ended, core.Ended) and ended.error is not None
    assert ended.error.code == ErrorCode.AUTH_FAILED
    assert session.phase is core.Phase.OFFLINE


def test_pushes_are_delivered_once_in_order_and_acked_once_per_batch() -> None:
    session = logged_in()
    frames_out(session)
    events = feed(session, pb.Frame(push=pb.Push(entries=[entry(2, 2), entry(1, 1)])), 0.1)
    [delivered] = [e for e in events if isinstance(e, core.Delivered)]
    assert [m.seq for m in delivered.messages] == [1, 2]
    assert feed(session, pb.Frame(push=pb.Push(entries=[entry(2, 2)])), 0.105) == []  # a replay
    assert frames_out(session) == []  # no ack before the batch delay
    due = session.next_due()
    assert due == pytest.approx(0.1 + core.ACK_DELAY_S)
    session.tick(due)
    [ack] = frames_out(session)
    assert ack.push_ack.inbox_seq == 2
    session.tick(due + 1e-3)
    assert frames_out(session) == []  # cumulative: nothing new, nothing sent


def test_a_gap_in_the_inbox_asks_for_a_sync_and_holds_what_is_early() -> None:
    session = logged_in()
    events = feed(session, pb.Frame(push=pb.Push(entries=[entry(2, 2)])))
    assert [type(e) for e in events] == [core.SyncNeeded]
    session.accept_sync(pb.SyncResponse(entries=[entry(1, 1)], inbox_head=2), 0.0)
    [delivered] = [e for e in session.events_received() if isinstance(e, core.Delivered)]
    assert [m.seq for m in delivered.messages] == [1, 2]


def test_sends_go_in_cid_order_within_the_inflight_bound_and_again_after_a_reconnect() -> None:
    session = logged_in(inflight=2)
    frames_out(session)
    cids = [session.send("d:a:b", f"t{i}", 0.0) for i in range(3)]
    first = frames_out(session)
    assert [f.send.cid for f in first] == cids[:2]  # the third waits for room
    events = feed(session, pb.Frame(id=first[0].id, send_ack=pb.SendAck(cid=cids[0], seq=1)))
    assert events == [core.SendDone(cids[0], core.Ack("", 1, "", cids[0]), None)]
    [third] = frames_out(session)
    assert third.send.cid == cids[2]
    session.connection_lost(1.0)
    session.login("tok", 1.0)
    [login] = frames_out(session)
    feed(session, pb.Frame(id=login.id, login_ack=pb.LoginAck(store_id="s1",
                                                             max_inflight_sends=2)))
    assert [f.send.cid for f in frames_out(session)] == cids[1:]  # same cids, same order
    # an answer on the old connection's request id is not taken for the new one
    assert feed(session, pb.Frame(id=first[1].id, send_ack=pb.SendAck(cid=cids[1]))) == []


def test_a_retriable_refusal_pauses_sends_then_resends_the_same_cid() -> None:
    session = logged_in()
    frames_out(session)
    cid = session.send("d:a:b", "t", 0.0)
    [send] = frames_out(session)
    events = feed(session, pb.Frame(id=send.id, error=pb.Error(
        code=int(ErrorCode.UNAVAILABLE), message="storage down", retriable=True)), 0.0)
    assert events == [] and session.send_retries == 1
    pause = session.sends.paused_until
    assert pause is not None and 0.05 <= pause <= 0.25
    session.tick(pause - 0.01)
    assert frames_out(session) == []
    session.tick(pause)
    [again] = frames_out(session)
    assert again.send.cid == cid and again.id != send.id


def test_a_final_refusal_fails_the_send_and_a_too_large_one_is_never_queued() -> None:
    session = logged_in()
    frames_out(session)
    cid = session.send("d:a:b", "t", 0.0)
    [send] = frames_out(session)
    [done] = feed(session, pb.Frame(id=send.id, error=pb.Error(
        code=int(ErrorCode.FORBIDDEN), message="not a member")))
    assert isinstance(done, core.SendDone) and done.cid == cid and done.error is not None
    assert len(session.sends) == 0
    with pytest.raises(core.RequestError) as refused:
        session.send("d:a:b", "x" * (70 * 1024), 0.0)
    assert refused.value.code == ErrorCode.FRAME_TOO_LARGE and len(session.sends) == 0


def test_requests_get_their_own_reply_and_a_forgotten_one_is_dropped() -> None:
    session = logged_in()
    frames_out(session)
    a = session.request(pb.Frame(friends=pb.FriendsRequest()))
    b = session.request(pb.Frame(friends=pb.FriendsRequest()))
    assert a != b and [f.id for f in frames_out(session)] == [a, b]
    session.forget(a)
    assert feed(session, pb.Frame(id=a, friends_response=pb.FriendsResponse())) == []
    [reply] = feed(session, pb.Frame(id=b, error=pb.Error(code=int(ErrorCode.UNAVAILABLE),
                                                           retriable=True)))
    assert isinstance(reply, core.Reply) and reply.error is not None and reply.error.retriable


def test_a_fatal_error_answers_its_request_as_final_then_ends_the_connection() -> None:
    session = logged_in()
    frames_out(session)
    rid = session.request(pb.Frame(friends=pb.FriendsRequest()))
    reply, ended = feed(session, pb.Frame(id=rid, error=pb.Error(
        code=int(ErrorCode.UNAVAILABLE), retriable=True, fatal=True)))
    assert isinstance(reply, core.Reply) and reply.error is not None
    assert not reply.error.retriable and isinstance(ended, core.Ended)


def test_heartbeats_are_due_every_interval_and_a_silent_server_ends_the_connection() -> None:
    session = logged_in()
    frames_out(session)
    assert session.next_due() == pytest.approx(HB_S)
    session.tick(HB_S)
    assert bodies(frames_out(session)) == ["heartbeat"]
    feed(session, pb.Frame(heartbeat_ack=pb.HeartbeatAck()), 1.5)
    for now in (2.0, 3.0, 4.0):
        session.tick(now)
        assert bodies(frames_out(session)) == ["heartbeat"]
    session.tick(5.0)  # nothing heard since 1.5: three intervals
    assert frames_out(session) == []
    assert [type(e) for e in session.events_received()] == [core.Ended]


def test_reconnect_backoff_grows_resets_after_a_stable_connection_and_obeys_the_server() -> None:
    session = core.ClientSession(rand=lambda: 1.0, backoff_max_s=1.0)
    assert [session.connection_lost(0.0) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    session = logged_in(rand=1.0)
    assert session.connection_lost(core.STAYED_UP_S + 1) == 0.2  # it stayed up: from the start
    session = logged_in()
    [ended] = feed(session, pb.Frame(reconnect=pb.Reconnect(delay_ms=400, reason="drain")))
    assert isinstance(ended, core.Ended) and ended.error is None
    assert session.connection_lost(0.1) == pytest.approx(0.4 * 1.5)


def test_group_pushes_and_pulls_fill_a_large_group_in_order() -> None:
    session = logged_in()
    session.events_received()
    msg = [pb.Message(conversation_id="g:1", seq=s, text=str(s)) for s in range(1, 5)]
    session.order.start("g:1", 0)
    events = feed(session, pb.Frame(group_push=pb.GroupPush(
        conversation_id="g:1", head_seq=4, messages=[msg[0], msg[3]])))
    assert [[m.seq for m in e.messages] for e in events if isinstance(e, core.Delivered)] == [[1]]
    assert any(isinstance(e, core.PullNeeded) for e in events)
    assert session.order.wants == {"g:1": 1}
    session.accept_pulled("g:1", msg[1:3])
    [delivered] = [e for e in session.events_received() if isinstance(e, core.Delivered)]
    assert [m.seq for m in delivered.messages] == [2, 3, 4]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_any_bytes_from_the_server_end_cleanly_or_are_taken(data: bytes) -> None:
    """Fuzz the core's input: nothing raises; undecodable bytes end the connection."""
    session = logged_in()
    session.receive(data, 0.0)
    for event in session.events_received():
        assert isinstance(event, (core.Delivered, core.Reply, core.SendDone, core.SyncNeeded,
                                  core.PullNeeded, core.Ended))
    session.data_to_send()


def test_the_docs_example_runs_as_written() -> None:
    """docs/client.md, "The sans-I/O core": its example prints what it says."""
    import contextlib
    import io
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()
    example = re.findall(r"```python\n(.*?)```", page, re.S)[-1]
    assert "clientsession" in example
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, "client.md", "exec"), {})
    assert out.getvalue().splitlines() == ["['LoggedIn', 'SyncNeeded']", "['hi']", "1"]
