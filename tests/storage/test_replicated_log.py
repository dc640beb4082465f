"""The embedded store's replicated log (storage.base.ReplicatedLog; docs/architecture.md,
"Regions"): two SQLite stores standing for two regions. What the home appends in a homed
conversation is in its log in commit order; the other store applies it by (conversation,
seq) exactly once, with its own inbox entries, and keeps its cursor in the same
transaction, so a batch applied twice or a reopened store changes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from chatplane.regions.groupchanges import SYSTEM_GROUP, change_of
from chatplane.storage.base import (
    ADMIN,
    CONVERSATION_HOME,
    MEMBER,
    OWNER,
    Home,
    LogExtent,
    LogTrimmed,
    MembershipChange,
    SendRequest,
    StorageError,
)
from chatplane.storage.sqlite import SqliteStorage
from chatplane.v1 import frames_pb2 as pb
from tests.storage.test_conformance import send

NOW_MS = 1_790_000_000_000
CONVERSATION = "d:alice:bob"
GROUP_ID = "g:replayed"


async def _store(path: Path) -> SqliteStorage:
    storage = SqliteStorage(path)
    await storage.open()
    return storage


async def test_the_log_holds_homed_messages_and_applies_once(tmp_path: Path) -> None:
    eu, us = await _store(tmp_path / "eu.db"), await _store(tmp_path / "us.db")
    try:
        await eu.ensure_direct("alice", "bob", NOW_MS)
        await eu.append(send(CONVERSATION, "alice", 1, "before any home"), ("alice", "bob"))
        # a conversation without a home row is not logged (a group, an event stream)
        assert (await eu.log_after(0, 100, "eu"))[0] == []
        await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1))
        # confirmed: what the chat held before joins the log, ahead of what follows
        await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        for cid in range(2, 6):
            await eu.append(send(CONVERSATION, "alice", cid, f"m{cid}"), ("alice", "bob"))
        await eu.ensure_direct("carol", "dave", NOW_MS)
        await eu.append(send("d:carol:dave", "carol", 1, "no home"), ("carol", "dave"))
        entries, scanned, head = await eu.log_after(0, 100, "eu")
        assert [(e.message.seq, e.epoch) for e in entries] == [(n, 1) for n in range(1, 6)]
        assert scanned == head == entries[-1].lsn
        assert (await eu.log_after(0, 100, "us"))[0] == []  # homed in eu, not us
        first, to, _ = await eu.log_after(0, 2, "eu")
        assert len(first) == 2 and to == first[-1].lsn

        await us.ensure_direct("alice", "bob", NOW_MS)
        await us.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        # an entry that would leave a hole (seq 1 missing here) is refused, nothing written
        with pytest.raises(StorageError):
            await us.apply_log("eu", entries[1:], scanned, {CONVERSATION: ("alice", "bob")})
        assert await us.log_cursor("eu") == 0 and await us.history(CONVERSATION) == []
        items = await us.apply_log("eu", entries, scanned, {CONVERSATION: ("alice", "bob")})
        assert [(i.user_id, i.inbox_seq, i.message.seq) for i in items if i.user_id == "bob"] == [
            ("bob", n, n) for n in range(1, 6)]
        assert await us.log_cursor("eu") == scanned
        # the same batch again (a stream reopened from an older cursor): nothing new
        assert await us.apply_log("eu", entries, scanned, {CONVERSATION: ("alice", "bob")}) == []
        assert await us.inbox_head("bob") == 5
        mine = [m.message_id for m in await eu.history(CONVERSATION)]
        assert [m.message_id for m in await us.history(CONVERSATION)] == mine
        # an entry applied here is never served from here: us does not home the chat
        assert (await us.log_after(0, 100, "us"))[0] == []
    finally:
        await eu.close()
        await us.close()


async def test_the_cursor_survives_a_restart(tmp_path: Path) -> None:
    us = await _store(tmp_path / "us.db")
    await us.ensure_direct("alice", "bob", NOW_MS)
    await us.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
    eu = await _store(tmp_path / "eu.db")
    await eu.ensure_direct("alice", "bob", NOW_MS)
    await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
    await eu.append(send(CONVERSATION, "alice", 1, "hi"), ("alice", "bob"))
    entries, scanned, _ = await eu.log_after(0, 10, "eu")
    await us.apply_log("eu", entries, scanned, {CONVERSATION: ("alice", "bob")})
    await us.close()
    again = await _store(tmp_path / "us.db")
    try:
        assert await again.log_cursor("eu") == scanned
        assert (await eu.log_after(scanned, 10, "eu"))[0] == []
    finally:
        await again.close()
        await eu.close()


async def test_an_append_knows_its_log_position(tmp_path: Path) -> None:
    """What a sync ack waits for comes with the append (no read of the head after it):
    at or past the message's own entry, a duplicate's at or past its original's."""
    eu = await _store(tmp_path / "eu.db")
    try:
        await eu.ensure_direct("alice", "bob", NOW_MS)
        unhomed = await eu.append(send(CONVERSATION, "alice", 1, "before any home"), ("bob",))
        assert unhomed.log_position == 0  # nothing logged yet
        await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        positions = []
        for cid in range(2, 5):
            result = await eu.append(send(CONVERSATION, "alice", cid), ("alice", "bob"))
            entries, _, head = await eu.log_after(0, 100, "eu")
            assert result.log_position == head == entries[-1].lsn
            positions.append(result.log_position)
        assert positions == sorted(set(positions))
        again = await eu.append(send(CONVERSATION, "alice", 2), ("alice", "bob"))
        assert again.duplicate and again.log_position >= positions[0]
        # appends sharing a writer batch: each at or past its own entry
        results = await asyncio.gather(*(eu.append(send(CONVERSATION, "bob", cid), ("alice",))
                                         for cid in range(1, 21)))
        entries, _, _ = await eu.log_after(0, 100, "eu")
        lsn = {e.message.seq: e.lsn for e in entries}
        assert all(r.log_position >= lsn[r.message.seq] for r in results)
    finally:
        await eu.close()


async def test_trimming_deletes_applied_entries_and_refuses_reads_below(tmp_path: Path) -> None:
    """trim_log deletes at most `limit` positions a call, never past the head (which a
    trim of everything does not lower); a read from a trimmed position raises
    LogTrimmed instead of serving a hole; the trim point survives a reopen."""
    eu = await _store(tmp_path / "eu.db")
    try:
        await eu.ensure_direct("alice", "bob", NOW_MS)
        await eu.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        for cid in range(1, 11):
            await eu.append(send(CONVERSATION, "alice", cid), ("alice", "bob"))
        assert await eu.log_extent() == LogExtent(0, 10)
        assert (await eu.trim_log(8, 3)) == LogExtent(3, 10)  # bounded batch
        assert (await eu.trim_log(8, 100)) == LogExtent(8, 10)
        assert (await eu.log_extent()).retained == 2
        with pytest.raises(LogTrimmed) as refused:
            await eu.log_after(5, 100, "eu")
        assert refused.value.trimmed_to == 8
        entries, scanned, head = await eu.log_after(8, 100, "eu")
        assert [e.message.seq for e in entries] == [9, 10] and scanned == head == 10
        assert await eu.trim_log(50, 100) == LogExtent(10, 10)  # never past the head
        assert await eu.log_head() == 10  # an empty log keeps its head
        assert await eu.log_after(10, 100, "eu") == ([], 10, 10)
        result = await eu.append(send(CONVERSATION, "alice", 11), ("alice", "bob"))
        assert result.log_position == 11  # positions go on after a full trim
    finally:
        await eu.close()
    again = await _store(tmp_path / "eu.db")
    try:
        assert await again.log_extent() == LogExtent(10, 11)
        with pytest.raises(LogTrimmed):
            await again.log_after(0, 100, "eu")
    finally:
        await again.close()


def _group_event(sender: str, cid: int, event: pb.GroupEvent) -> SendRequest:
    return send(GROUP_ID, sender, cid, payload=event.SerializeToString(),
                content_type=SYSTEM_GROUP)


async def test_a_group_is_replayed_from_its_log(tmp_path: Path) -> None:
    """The home makes a group, adds, kicks and renames, with messages between; the
    other store, which never had the group, ends with the same members, roles, name,
    timeline and membership spans, and inbox entries for the members at each seq."""
    eu, us = await _store(tmp_path / "eu.db"), await _store(tmp_path / "us.db")
    try:
        await eu.offer_home(CONVERSATION_HOME, GROUP_ID, Home("eu", 1, True))
        await eu.apply_membership(GROUP_ID, MembershipChange(
            create=True, name="g", add=(("alice", OWNER), ("bob", MEMBER))), _group_event(
                "alice", 1, pb.GroupEvent(actor="alice", user_ids=["bob"], name="g")))
        await eu.append(send(GROUP_ID, "alice", 2, "one"), ("alice", "bob"))
        await eu.apply_membership(GROUP_ID, MembershipChange(add=(("carol", MEMBER),)),
                                  _group_event("alice", 3, pb.GroupEvent(
                                      action=pb.ADD, actor="alice", user_ids=["carol"])))
        await eu.apply_membership(GROUP_ID, MembershipChange(remove=("bob",)), _group_event(
            "alice", 4, pb.GroupEvent(action=pb.KICK, actor="alice", user_ids=["bob"])))
        await eu.append(send(GROUP_ID, "carol", 5, "two"), ("alice", "carol"))
        await eu.apply_membership(GROUP_ID, MembershipChange(roles=(("carol", OWNER),
                                                                    ("alice", ADMIN))),
                                  _group_event("alice", 6, pb.GroupEvent(
                                      action=pb.SET_ROLE, actor="alice", user_ids=["carol"],
                                      role=OWNER)))
        await eu.apply_membership(GROUP_ID, MembershipChange(name="renamed"), _group_event(
            "carol", 7, pb.GroupEvent(action=pb.RENAME, actor="carol", name="renamed")))
        entries, scanned, _ = await eu.log_after(0, 100, "eu")
        assert [e.message.seq for e in entries] == list(range(1, 8))

        await us.offer_home(CONVERSATION_HOME, GROUP_ID, Home("eu", 1, True))
        changes = {e.lsn: c for e in entries if (c := change_of(e.message)) is not None}
        items = await us.apply_log("eu", entries, scanned, {}, changes, large_above=500)
        assert await us.apply_log("eu", entries, scanned, {}, changes, 500) == []  # once
        assert await us.members(GROUP_ID) == await eu.members(GROUP_ID)
        mine, theirs = await eu.conversation(GROUP_ID), await us.conversation(GROUP_ID)
        assert mine is not None and theirs is not None
        assert (theirs.kind, theirs.members, theirs.extra, theirs.head_seq) == (
            mine.kind, mine.members, mine.extra, mine.head_seq)
        for user in ("alice", "bob", "carol"):
            assert await us.membership_span(user, GROUP_ID) == await eu.membership_span(
                user, GROUP_ID)
            got = [i.message.seq for i in items if i.user_id == user]
            assert got == [i.message.seq for i in await eu.inbox(user, 0, 100)], user
        # bob sees up to his removal, carol from her addition
        assert [i.message.seq for i in items if i.user_id == "bob"] == [1, 2, 3, 4]
        assert [i.message.seq for i in items if i.user_id == "carol"] == [3, 4, 5, 6, 7]
    finally:
        await eu.close()
        await us.close()


async def test_a_takeover_raises_the_epoch_and_supersedes_what_the_lost_home_kept(
        tmp_path: Path) -> None:
    """Failover (docs/architecture.md): us takes over eu's homes at epoch + 1. What eu
    sequenced and never replicated (never acked in sync) holds seqs us gives to other
    messages; when eu applies us's log it replaces them, seq for seq, including a row
    that holds the cid a device resent to us (sequenced afresh there)."""
    eu, us = await _store(tmp_path / "eu.db"), await _store(tmp_path / "us.db")
    members: dict[str, tuple[str, ...]] = {CONVERSATION: ("alice", "bob")}
    try:
        for store in (eu, us):
            await store.ensure_direct("alice", "bob", NOW_MS)
            await store.offer_home(CONVERSATION_HOME, CONVERSATION, Home("eu", 1, True))
        for cid in (1, 2):
            await eu.append(send(CONVERSATION, "alice", cid), members[CONVERSATION])
        entries, scanned, _ = await eu.log_after(0, 100, "eu")
        await us.apply_log("eu", entries, scanned, members)
        # eu sequences two more (seq 3: bob's cid 5, seq 4: alice's cid 3), then dies
        await eu.append(send(CONVERSATION, "bob", 5), members[CONVERSATION])
        await eu.append(send(CONVERSATION, "alice", 3), members[CONVERSATION])

        assert await us.take_over_homes("eu", "us") == 1
        assert await us.home(CONVERSATION_HOME, CONVERSATION) == Home("us", 2, True)
        # alice resends cid 3 to us (a new message id: sequenced afresh), then bob cid 5
        for sender, cid in (("alice", 3), ("bob", 5)):
            await us.append(replace(send(CONVERSATION, sender, cid), message_id=f"us-{cid}"),
                            members[CONVERSATION])
        entries, scanned, _ = await us.log_after(0, 100, "us")
        assert {e.epoch for e in entries} == {2}  # served under the raised epoch

        # eu is back: it learns the home (a higher epoch replaces its own row) ...
        assert await eu.offer_home(CONVERSATION_HOME, CONVERSATION,
                                   Home("us", 2, True)) == Home("us", 2, True)
        assert (await eu.log_after(0, 100, "eu"))[0] == []  # ... and serves none of it
        await eu.apply_log("us", entries, scanned, members)
        theirs = [(m.seq, m.message_id) for m in await us.history(CONVERSATION)]
        assert [(m.seq, m.message_id) for m in await eu.history(CONVERSATION)] == theirs
        assert theirs[2:] == [(3, "us-3"), (4, "us-5")]
        # the same takeover run twice changes nothing more (no row of eu is left)
        assert await us.take_over_homes("eu", "us") == 0
    finally:
        await eu.close()
        await us.close()
