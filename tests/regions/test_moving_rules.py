"""The part of issue 17's admin moves that lives in one process, on a real SQLite store:
what the old home sequenced past the head it handed off at is served to no peer
(`Replication.serve`, `Homes.held_back`) until the move is over; given up, it is served
as it is; moved, the chat's entries are served no more; a hand-off nobody ends is
checked with the peers after MOVE_HOLD_S and the log goes on. (The three-region e2e
test, tests/regions/test_moving_e2e.py, shows what a third region did with it.)"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from chatplane.regions import homes as homes_module
from chatplane.regions.homes import Homes
from chatplane.regions.moving import MoveConflict, Moves
from chatplane.regions.replication import Replication
from chatplane.regions.user_moves import UserMoves
from chatplane.storage.base import (
    CONVERSATION_HOME,
    USER_HOME,
    Home,
    InboxItem,
    LogEntry,
    StoredMessage,
)
from chatplane.storage.sqlite import SqliteStorage
from chatplane.v1 import regions_pb2 as rpb
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
CHAT = "d:alice:carol"


def _no_channel(name: str) -> grpc.aio.Channel:
    raise AssertionError(f"no call to {name} expected")


async def _applied(messages: Sequence[StoredMessage], items: Sequence[InboxItem]) -> None:
    raise AssertionError("nothing is applied here")


async def _next(stream: AsyncIterator[rpb.LogBatch], after: int) -> rpb.LogBatch:
    """The stream's next batch past `after` (heartbeats, which stay there, skipped)."""
    while True:
        batch = await asyncio.wait_for(stream.__anext__(), 5)
        if batch.scanned_to > after:
            return batch


def _seqs(batch: rpb.LogBatch) -> list[int]:
    return [e.message.seq for e in batch.entries if not e.inbox_user]


async def _eu(tmp_path: Path, sent: int) -> tuple[SqliteStorage, Homes, Replication]:
    """eu homes CHAT and sequenced `sent` messages in it."""
    storage = SqliteStorage(tmp_path / "eu.db")
    await storage.open()
    await storage.ensure_direct("alice", "carol", NOW_MS)
    await storage.offer_home(CONVERSATION_HOME, CHAT, Home("eu", 1, True))
    for cid in range(1, sent + 1):
        await storage.append(send(CHAT, "alice", cid), ())
    homes = Homes("eu", storage, [], _no_channel)
    return storage, homes, Replication(homes, storage, _applied)


async def _handed_off_then_sent(storage: SqliteStorage, homes: Homes) -> int:
    """A hand-off at the log head, then a send committed past it (it was in flight):
    its log position."""
    homes.hand_off(CHAT)
    head = await storage.log_head()
    homes.handed_off_at(CHAT, head)
    result = await storage.append(send(CHAT, "alice", 3), ())
    assert homes.moved_past(CHAT, result.log_position)
    return result.log_position


async def test_what_was_sequenced_past_the_head_waits_until_the_move_is_given_up(
        tmp_path: Path) -> None:
    storage, homes, replication = await _eu(tmp_path, 2)
    try:
        past = await _handed_off_then_sent(storage, homes)
        stream = replication.serve(rpb.ReplicateRequest(region="ap", after=0)).__aiter__()
        batch = await _next(stream, 0)
        assert (_seqs(batch), batch.scanned_to) == ([1, 2], past - 1)  # held at seq 3
        waiting = asyncio.ensure_future(_next(stream, past - 1))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # heartbeats only: the position stays
        homes.resume(CHAT)  # given up: eu is still the home, seq 3 is its message
        batch = await asyncio.wait_for(waiting, 2)
        assert _seqs(batch) == [3] and batch.scanned_to == await storage.log_head()
        await stream.aclose()
    finally:
        await homes.stop()
        await storage.close()


async def test_once_moved_the_chat_is_served_no_more(tmp_path: Path) -> None:
    storage, homes, replication = await _eu(tmp_path, 2)
    try:
        past = await _handed_off_then_sent(storage, homes)
        stream = replication.serve(rpb.ReplicateRequest(region="ap", after=0)).__aiter__()
        assert (await _next(stream, 0)).scanned_to == past - 1
        # the new home's row reaches eu (its offer), then the move is over
        await homes.learn(CONVERSATION_HOME, CHAT, Home("us", 2, True))
        homes.resume(CHAT)
        batch = await _next(stream, past - 1)
        assert _seqs(batch) == [] and batch.scanned_to == await storage.log_head()
        await stream.aclose()
    finally:
        await homes.stop()
        await storage.close()


async def test_a_hand_off_nobody_ends_is_checked_and_the_log_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(homes_module, "MOVE_HOLD_S", 0.5)
    storage, homes, replication = await _eu(tmp_path, 2)
    try:
        past = await _handed_off_then_sent(storage, homes)
        stream = replication.serve(rpb.ReplicateRequest(region="ap", after=0)).__aiter__()
        assert (await _next(stream, 0)).scanned_to == past - 1
        # past the hold, the row is checked (no peer here says otherwise): eu's again
        batch = await _next(stream, past - 1)
        assert _seqs(batch) == [3] and not homes.moving(CHAT)
        await stream.aclose()
    finally:
        await homes.stop()
        await storage.close()


async def test_an_inbox_entry_is_served_while_a_supersede_took_its_message_away(
        tmp_path: Path) -> None:
    """eu sequenced two sends past its hand-off head: alice's at seq 3, carol's at 4
    (alice, homed in eu, has an inbox entry for each). us took the chat and sequenced
    carol's resend at seq 3: applied in eu it replaces alice's send at 3 and, by its
    cid, carol's at 4, so eu holds no message at 4 until us's seq 4 arrives. alice's
    entry for seq 4 names (chat, 4), which a reader resolves in its own store: it is
    served all the same (it was dropped while the position moved past it, a hole in
    alice's inbox in every other region for good: seen in the three-region move test,
    held back until just that moment)."""
    storage, homes, _ = await _eu(tmp_path, 2)
    try:
        await storage.offer_home(USER_HOME, "alice", Home("eu", 1, True))
        await storage.append(send(CHAT, "alice", 3), ("alice",))
        await storage.append(send(CHAT, "carol", 1), ("alice",))
        await storage.offer_home(CONVERSATION_HOME, CHAT, Home("us", 2, True))
        resend = dataclasses.replace(
            (await storage.history(CHAT, after_seq=3, limit=1))[0], seq=3, message_id="carol-resent-in-us")
        await storage.apply_log("us", [LogEntry(1, 2, resend)], 1, {CHAT: ("alice", "carol")})
        assert [m.seq for m in await storage.history(CHAT, after_seq=0)] == [1, 2, 3]  # 4 is gone
        entries, _, _ = await storage.log_after(0, 100, "eu")
        assert [(e.inbox_user, e.inbox_seq, e.message.seq) for e in entries] == [
            ("alice", 1, 3), ("alice", 2, 4)]
    finally:
        await homes.stop()
        await storage.close()


async def test_a_second_move_of_one_chat_is_refused_and_leaves_the_first_alone(
        tmp_path: Path) -> None:
    """eu hands CHAT off to us; ap's hand-off of it is refused (MoveConflict: 409 on the
    admin API) and ap's clean-up (`resume`) does not end us's hand-off; us's does. Before
    the refusal ap's hand-off replaced us's and ap's resume ended the move under us."""
    storage, homes, _ = await _eu(tmp_path, 2)
    moves = Moves(homes, storage, storage, lambda peer: 0)
    try:
        reply = await moves.hand_off(rpb.HandOffRequest(region="us", kind=CONVERSATION_HOME,
                                                        key=CHAT))
        assert reply.home.home == "eu" and reply.log_head == await storage.log_head()
        with pytest.raises(MoveConflict, match="being moved to region us"):
            await moves.hand_off(rpb.HandOffRequest(region="ap", kind=CONVERSATION_HOME,
                                                    key=CHAT))
        await moves.hand_off(rpb.HandOffRequest(region="ap", kind=CONVERSATION_HOME, key=CHAT,
                                                resume=True))
        assert homes.moving(CHAT)  # still handed off to us
        await moves.hand_off(rpb.HandOffRequest(region="us", kind=CONVERSATION_HOME, key=CHAT,
                                                resume=True))
        assert not homes.moving(CHAT)
    finally:
        await homes.stop()
        await storage.close()


async def test_a_users_events_past_its_moves_head_are_served_once_the_move_is_over(
        tmp_path: Path) -> None:
    """alice's home (and her events' timeline, u:alice) moves from eu: an event eu
    sequenced past the head it held her at (in flight as it held) is served to no peer
    while the move is under way (a third region would push it at a seq the new home
    gives out); given up, it is served as it is."""
    storage, homes, replication = await _eu(tmp_path, 2)
    events = "u:alice"
    try:
        await storage.offer_home(USER_HOME, "alice", Home("eu", 1, True))
        await storage.ensure_events("alice", NOW_MS)
        await storage.offer_home(CONVERSATION_HOME, events, Home("eu", 1, True))
        await storage.append(send(events, "alice", 1), ())
        homes.hold_user("alice", "us")
        homes.user_held_at("alice", await storage.log_head())
        past = (await storage.append(send(events, "alice", 2), ())).log_position
        assert homes.moved_past(events, past)
        stream = replication.serve(rpb.ReplicateRequest(region="ap", after=0)).__aiter__()
        batch = await _next(stream, 0)
        assert batch.scanned_to == past - 1
        assert [e.message.conversation_id for e in batch.entries] == [CHAT, CHAT, events]
        waiting = asyncio.ensure_future(_next(stream, past - 1))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held
        homes.release_user("alice")  # given up: eu is still her home
        batch = await asyncio.wait_for(waiting, 2)
        assert [(e.message.conversation_id, e.message.seq) for e in batch.entries] == [
            (events, 2)]
        await stream.aclose()
    finally:
        await homes.stop()
        await storage.close()


async def test_a_second_move_of_one_user_is_refused_and_leaves_the_first_alone(
        tmp_path: Path) -> None:
    """The same for a user's home: eu holds alice for us; ap's hand-off is refused
    (MoveConflict) and ap's resume leaves the hold; us's lifts it."""
    storage, homes, _ = await _eu(tmp_path, 0)
    moves = UserMoves(homes, storage, lambda peer: 0, _applied)
    events = "u:alice"
    try:
        await storage.offer_home(USER_HOME, "alice", Home("eu", 1, True))
        reply = await moves.hand_off(rpb.HandOffRequest(region="us", kind=USER_HOME,
                                                        key="alice"))
        assert reply.home.home == "eu" and homes.moving(events)
        with pytest.raises(MoveConflict, match="being moved to region us"):
            await moves.hand_off(rpb.HandOffRequest(region="ap", kind=USER_HOME, key="alice"))
        await moves.hand_off(rpb.HandOffRequest(region="ap", kind=USER_HOME, key="alice",
                                                resume=True))
        assert homes.moving(events)  # still held for us
        await moves.hand_off(rpb.HandOffRequest(region="us", kind=USER_HOME, key="alice",
                                                resume=True))
        assert not homes.moving(events)
    finally:
        moves.stop()
        await homes.stop()
        await storage.close()
