"""Friends and reads on the embedded store's replicated log (docs/architecture.md,
"Friends and reads across regions"): two SQLite stores standing for two regions. The
deciding store writes a pair's rows and their record in one transaction, the record is
in its log, and the rows another store applies from it are the decider's; read
positions merge by max, also before their conversation exists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from chatplane.regions.social import (
    RELATIONS_RECORD,
    decider,
    decode_rows,
    encode_rows,
    read_of,
    relations_log,
)
from chatplane.storage.base import CONVERSATION_HOME, Home, Relation, SendRequest, StoredMessage
from chatplane.storage.sqlite import SqliteStorage
from chatplane.v1 import frames_pb2 as pb

NOW_MS = 1_790_000_000_000
LOG = relations_log("alice")  # the pair (alice, bob) is decided with alice


def _record(cid: int, rows: list[tuple[str, str, Relation]]) -> SendRequest:
    return SendRequest(conversation_id=LOG, sender="alice", sender_device="eu-relations",
                       cid=cid, text="", message_id=f"r{cid}", sent_at_ms=NOW_MS + cid,
                       payload=encode_rows(rows), content_type=RELATIONS_RECORD)


async def _store(path: Path, region: str) -> SqliteStorage:
    storage = SqliteStorage(path)
    await storage.open()
    storage.serve_region(region)
    await storage.offer_home(CONVERSATION_HOME, LOG, Home("eu", 1, True))
    return storage


def test_a_pair_is_decided_with_its_first_user() -> None:
    assert decider("bob", "alice") == decider("alice", "bob") == "alice"
    assert LOG == "r:alice"


def test_a_record_carries_both_rows_and_a_read_event_its_position() -> None:
    rows = [("alice", "bob", Relation(friend=True, note="hi", updated_at_ms=5)),
            ("bob", "alice", Relation(blocked=True, updated_at_ms=5))]
    assert decode_rows(encode_rows(rows)) == rows
    read = pb.Event(read=pb.ReadEvent(conversation_id="d:alice:bob", read_seq=7))
    message = StoredMessage(conversation_id="u:alice", seq=3, message_id="m", sender="alice",
                            sender_device="d", cid=1, text="", sent_at_ms=NOW_MS,
                            payload=read.SerializeToString(), content_type="event/read")
    assert read_of(message) == ("alice", "d:alice:bob", 7)
    assert read_of(replace(message, content_type="event/receipt")) is None
    assert read_of(replace(message, conversation_id="d:alice:bob")) is None


async def test_the_deciders_rows_reach_the_other_store_through_its_log(tmp_path: Path) -> None:
    eu, us = await _store(tmp_path / "eu.db", "eu"), await _store(tmp_path / "us.db", "us")
    try:
        asked = [("alice", "bob", Relation(request_sent=True, updated_at_ms=1)),
                 ("bob", "alice", Relation(request_received=True, updated_at_ms=1))]
        friends = [("alice", "bob", Relation(friend=True, updated_at_ms=2)),
                   ("bob", "alice", Relation(friend=True, updated_at_ms=2))]
        first = await eu.record_relations(_record(1, asked), asked)
        assert first.message.seq == 1 and first.log_position > 0
        await eu.record_relations(_record(2, friends), friends)
        # a resend of a record (same device and cid) writes no rows: one transaction
        again = await eu.record_relations(_record(1, asked), asked)
        assert again.duplicate
        assert await eu.relation("alice", "bob") == friends[0][2]
        # the records are in eu's log, in the order they were decided
        entries, scanned, _ = await eu.log_after(0, 100, "eu")
        assert [(e.message.conversation_id, e.message.seq) for e in entries] == [(LOG, 1),
                                                                                (LOG, 2)]
        # us applies each record's rows, then stores the batch (regions/social.py)
        await us.ensure_relations_log(LOG, NOW_MS)
        for entry in entries:
            await us.put_relations(decode_rows(entry.message.payload))
        await us.apply_log("eu", entries, scanned, {LOG: ()})
        for user, other in (("alice", "bob"), ("bob", "alice")):
            assert await us.relation(user, other) == await eu.relation(user, other)
        # nobody reads the timeline: it is no member's conversation
        assert await us.conversations_of("alice", 10) == []
        assert await us.inbox_head("alice") == 0
    finally:
        await eu.close()
        await us.close()


async def test_read_positions_merge_by_max(tmp_path: Path) -> None:
    store = await _store(tmp_path / "eu.db", "eu")
    try:
        chat = (await store.ensure_direct("alice", "bob", NOW_MS)).conversation_id
        await store.merge_reads([("alice", chat, 5), ("bob", "d:bob:carol", 3)])
        await store.merge_reads([("alice", chat, 4)])  # an older read arrives late
        positions = await store.read_positions(chat)
        assert positions["alice"] == 5
        # a read that came before its chat: the chat's members, arriving later, keep it
        await store.ensure_direct("bob", "carol", NOW_MS)
        listed = {c.conversation_id: c.read_seq for c in await store.conversations_of("bob", 10)}
        assert listed["d:bob:carol"] == 3
    finally:
        await store.close()
