"""The CQL statements of the ScyllaDB backend, prepared once at open().

Each is marked idempotent or not for the driver's retry policy: plain writes
at a fixed key (and timestamp) may be re-sent; conditional writes (sequence
takes and block reservations) are never re-sent by the driver, the backend
settles their outcome itself (scylla_seq.py). Tables are created by
migrations.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.query import PreparedStatement

from chatplane.storage import cql
from chatplane.storage.base import StoredMessage

MESSAGE_COLUMNS = ("conversation_id, seq, message_id, sender, sender_device, cid, text, "
                   "sent_at_ms, payload, content_type, recipients, appended_at_ms, fanned_out, "
                   "membership")


def message_from_row(row: dict[str, Any]) -> StoredMessage:
    return StoredMessage(
        conversation_id=row["conversation_id"], seq=row["seq"], message_id=row["message_id"],
        sender=row["sender"], sender_device=row["sender_device"], cid=row["cid"],
        text=row["text"] or "", sent_at_ms=row["sent_at_ms"] or 0,
        payload=bytes(row["payload"] or b""), content_type=row["content_type"] or "text")


@dataclass
class Statements:
    """Every statement the backend runs, prepared once at open()."""

    insert_conversation: PreparedStatement
    select_conversation: PreparedStatement
    conversation_hint: PreparedStatement
    set_conversation_hint: PreparedStatement
    select_message: PreparedStatement
    messages_in: PreparedStatement
    top_seq: PreparedStatement
    timeline_range: PreparedStatement
    timeline_desc: PreparedStatement
    insert_send: PreparedStatement
    select_send: PreparedStatement
    inbox_after: PreparedStatement
    inbox_desc: PreparedStatement
    top_inbox: PreparedStatement
    inbox_hint: PreparedStatement
    set_inbox_hint: PreparedStatement
    create_user: PreparedStatement
    upsert_user: PreparedStatement
    select_user: PreparedStatement
    heads_in: PreparedStatement
    set_conversation_facts: PreparedStatement
    set_conversation_name: PreparedStatement
    set_conversation_extra: PreparedStatement
    timeline_senders: PreparedStatement
    put_member: PreparedStatement
    delete_member: PreparedStatement
    set_role: PreparedStatement
    select_members: PreparedStatement
    join_conversation: PreparedStatement
    leave_conversation: PreparedStatement
    select_user_conversation: PreparedStatement
    user_conversations: PreparedStatement
    set_read: PreparedStatement
    select_read: PreparedStatement
    select_reads: PreparedStatement
    put_relation: PreparedStatement
    delete_relation: PreparedStatement
    select_relation: PreparedStatement
    select_relations: PreparedStatement
    put_invitation: PreparedStatement
    select_invitation: PreparedStatement
    take_invitation: PreparedStatement
    put_user_invitation: PreparedStatement
    delete_user_invitation: PreparedStatement
    select_user_invitations: PreparedStatement
    put_revocation: PreparedStatement
    select_revocations: PreparedStatement
    select_home: PreparedStatement
    insert_home: PreparedStatement
    update_home: PreparedStatement
    select_sequence: PreparedStatement
    sequences_in: PreparedStatement
    take_sequence: PreparedStatement
    extend_sequence: PreparedStatement
    write_message: PreparedStatement
    mark_done: PreparedStatement
    seal_messages: PreparedStatement
    write_inbox: PreparedStatement
    seal_inbox: PreparedStatement
    set_conversation_head: PreparedStatement
    top_cid: PreparedStatement

    @classmethod
    async def prepare(cls, db: cql.CqlSession, ks: str) -> Statements:
        m = f"{ks}.messages"
        queries: dict[str, tuple[str, bool]] = {
            # Identity only: every other cell is written USING TIMESTAMP <seq>
            # (a Paxos timestamp here would shadow those writes).
            "insert_conversation": (
                f"INSERT INTO {ks}.conversations (conversation_id, kind, created_at_ms)"
                " VALUES (?, ?, ?) IF NOT EXISTS", False),
            "select_conversation": (
                f"SELECT * FROM {ks}.conversations WHERE conversation_id = ?", True),
            "conversation_hint": (
                f"SELECT head_seq, last_activity_ms, member_count FROM {ks}.conversation_heads"
                " WHERE conversation_id = ?", True),
            "set_conversation_hint": (
                f"UPDATE {ks}.conversation_heads USING TIMESTAMP ? SET head_seq = ?,"
                " last_activity_ms = ? WHERE conversation_id = ?", True),
            "heads_in": (
                f"SELECT conversation_id, head_seq, last_activity_ms, member_count"
                f" FROM {ks}.conversation_heads WHERE conversation_id IN ?", True),
            "set_conversation_facts": (
                f"UPDATE {ks}.conversation_heads USING TIMESTAMP ? SET member_count = ?,"
                " last_activity_ms = ? WHERE conversation_id = ?", True),
            "set_conversation_name": (
                f"UPDATE {ks}.conversations USING TIMESTAMP ? SET name = ?"
                " WHERE conversation_id = ?", True),
            "set_conversation_extra": (
                f"UPDATE {ks}.conversations USING TIMESTAMP ? SET extra[?] = ?"
                " WHERE conversation_id = ?", True),
            "timeline_senders": (
                f"SELECT seq, sender, content_type FROM {m} WHERE conversation_id = ?"
                " AND bucket = ? AND seq >= ? AND seq <= ?", True),
            "put_member": (
                f"INSERT INTO {ks}.members (conversation_id, user_id, role, joined_seq)"
                " VALUES (?, ?, ?, ?) USING TIMESTAMP ?", True),
            "delete_member": (
                f"DELETE FROM {ks}.members USING TIMESTAMP ? WHERE conversation_id = ?"
                " AND user_id = ?", True),
            "set_role": (
                f"UPDATE {ks}.members USING TIMESTAMP ? SET role = ? WHERE conversation_id = ?"
                " AND user_id = ?", True),
            "select_members": (
                f"SELECT user_id, role, joined_seq FROM {ks}.members WHERE conversation_id = ?",
                True),
            "join_conversation": (
                f"UPDATE {ks}.user_conversations USING TIMESTAMP ? SET kind = ?, joined_seq = ?,"
                " left_seq = 0 WHERE user_id = ? AND conversation_id = ?", True),
            "leave_conversation": (
                f"UPDATE {ks}.user_conversations USING TIMESTAMP ? SET left_seq = ?"
                " WHERE user_id = ? AND conversation_id = ?", True),
            "select_user_conversation": (
                f"SELECT kind, joined_seq, left_seq FROM {ks}.user_conversations"
                " WHERE user_id = ? AND conversation_id = ?", True),
            "user_conversations": (
                f"SELECT conversation_id, kind, joined_seq, left_seq FROM {ks}.user_conversations"
                " WHERE user_id = ?", True),
            "set_read": (
                f"UPDATE {ks}.reads USING TIMESTAMP ? SET read_seq = ? WHERE conversation_id = ?"
                " AND user_id = ?", True),
            "select_read": (
                f"SELECT read_seq FROM {ks}.reads WHERE conversation_id = ? AND user_id = ?", True),
            "select_reads": (
                f"SELECT user_id, read_seq FROM {ks}.reads WHERE conversation_id = ?", True),
            "put_relation": (
                f"INSERT INTO {ks}.relations (user_id, other, friend, request_sent,"
                " request_received, note, blocked, updated_at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", True),
            "delete_relation": (
                f"DELETE FROM {ks}.relations WHERE user_id = ? AND other = ?", True),
            "select_relation": (
                f"SELECT other, friend, request_sent, request_received, note, blocked,"
                f" updated_at_ms FROM {ks}.relations WHERE user_id = ? AND other = ?", True),
            "select_relations": (
                f"SELECT other, friend, request_sent, request_received, note, blocked,"
                f" updated_at_ms FROM {ks}.relations WHERE user_id = ?", True),
            "put_invitation": (
                f"INSERT INTO {ks}.invitations (conversation_id, user_id, inviter, at_ms)"
                " VALUES (?, ?, ?, ?)", True),
            "select_invitation": (
                f"SELECT inviter FROM {ks}.invitations WHERE conversation_id = ? AND user_id = ?",
                True),
            "take_invitation": (
                f"DELETE FROM {ks}.invitations WHERE conversation_id = ? AND user_id = ?"
                " IF inviter = ?", False),
            "put_user_invitation": (
                f"INSERT INTO {ks}.user_invitations (user_id, conversation_id, inviter, at_ms)"
                " VALUES (?, ?, ?, ?)", True),
            "delete_user_invitation": (
                f"DELETE FROM {ks}.user_invitations WHERE user_id = ? AND conversation_id = ?",
                True),
            "select_user_invitations": (
                f"SELECT conversation_id, inviter, at_ms FROM {ks}.user_invitations"
                " WHERE user_id = ?", True),
            "select_message": (
                f"SELECT {MESSAGE_COLUMNS} FROM {m} WHERE conversation_id = ? AND bucket = ?"
                " AND seq = ?", True),
            "messages_in": (
                f"SELECT {MESSAGE_COLUMNS} FROM {m} WHERE conversation_id = ? AND bucket = ?"
                " AND seq IN ?", True),
            "top_seq": (
                f"SELECT seq FROM {m} WHERE conversation_id = ? AND bucket = ?"
                " ORDER BY seq DESC LIMIT 1", True),
            "timeline_range": (
                f"SELECT {MESSAGE_COLUMNS} FROM {m} WHERE conversation_id = ? AND bucket = ?"
                " AND seq >= ? AND seq <= ? LIMIT ?", True),
            "timeline_desc": (
                f"SELECT {MESSAGE_COLUMNS} FROM {m} WHERE conversation_id = ? AND bucket = ?"
                " AND seq <= ? ORDER BY seq DESC LIMIT ?", True),
            # At the holder's timestamp: a stale holder's entry (its message is
            # sealed) never overwrites a newer holder's for the same cid.
            "insert_send": (
                f"INSERT INTO {ks}.sends (conversation_id, sender, sender_device, cid_bucket,"
                " cid, seq) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", True),
            "select_send": (
                f"SELECT seq FROM {ks}.sends WHERE conversation_id = ? AND sender = ?"
                " AND sender_device = ? AND cid_bucket = ? AND cid = ?", True),
            "inbox_after": (
                f"SELECT inbox_seq, conversation_id, seq FROM {ks}.inbox WHERE user_id = ?"
                " AND bucket = ? AND inbox_seq > ? LIMIT ?", True),
            "inbox_desc": (
                f"SELECT inbox_seq, conversation_id, seq, added_at_ms FROM {ks}.inbox"
                " WHERE user_id = ? AND bucket = ? AND inbox_seq <= ?"
                " ORDER BY inbox_seq DESC LIMIT ?", True),
            "top_inbox": (
                f"SELECT inbox_seq FROM {ks}.inbox WHERE user_id = ? AND bucket = ?"
                " ORDER BY inbox_seq DESC LIMIT 1", True),
            "inbox_hint": (f"SELECT head FROM {ks}.inbox_heads WHERE user_id = ?", True),
            "set_inbox_hint": (
                f"UPDATE {ks}.inbox_heads USING TIMESTAMP ? SET head = ? WHERE user_id = ?",
                True),
            "create_user": (
                f"INSERT INTO {ks}.users (user_id, created_at_ms) VALUES (?, ?) IF NOT EXISTS",
                True),
            "upsert_user": (
                f"UPDATE {ks}.users SET display_name = ? WHERE user_id = ?", True),
            "select_user": (
                f"SELECT display_name, created_at_ms FROM {ks}.users WHERE user_id = ?", True),
            "put_revocation": (
                f"UPDATE {ks}.revocations USING TIMESTAMP ? SET before_ms = ?"
                " WHERE scope = 'all' AND user_id = ? AND device_id = ?", True),
            "select_revocations": (
                f"SELECT user_id, device_id, before_ms FROM {ks}.revocations"
                " WHERE scope = 'all'", True),
            # Home regions: changed by conditional writes only (offer_home).
            "select_home": (
                f"SELECT region, epoch, confirmed FROM {ks}.homes WHERE kind = ? AND key = ?",
                True),
            "insert_home": (
                f"INSERT INTO {ks}.homes (kind, key, region, epoch, confirmed)"
                " VALUES (?, ?, ?, ?, ?) IF NOT EXISTS", False),
            "update_home": (
                f"UPDATE {ks}.homes SET region = ?, epoch = ?, confirmed = ?"
                " WHERE kind = ? AND key = ? IF region = ? AND epoch = ? AND confirmed = ?",
                False),
            # Seq blocks (scylla_seq.py): the sequence rows change only by
            # conditional writes, once per block or per take, never per message.
            "select_sequence": (
                f"SELECT epoch, gen, ts_base, reserved FROM {ks}.sequencers WHERE key = ?", True),
            "sequences_in": (
                f"SELECT key, epoch, gen FROM {ks}.sequencers WHERE key IN ?", True),
            "take_sequence": (
                f"UPDATE {ks}.sequencers SET epoch = ?, gen = ?, ts_base = ?, reserved = ?,"
                " owner = ? WHERE key = ? IF epoch = ? AND gen = ? AND reserved = ?", False),
            "extend_sequence": (
                f"UPDATE {ks}.sequencers SET reserved = ?, ts_base = ? WHERE key = ?"
                " IF epoch = ? AND gen = ?", False),
            # Plain writes at the holder's timestamp: a newer holder's seal
            # (a range tombstone at a higher timestamp) shadows a stale one's.
            "write_message": (
                f"INSERT INTO {m} (conversation_id, bucket, seq, message_id, sender,"
                " sender_device, cid, text, sent_at_ms, payload, content_type, recipients,"
                " appended_at_ms, membership) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " USING TIMESTAMP ?", True),
            "mark_done": (
                f"UPDATE {m} USING TIMESTAMP ? SET fanned_out = true WHERE conversation_id = ?"
                " AND bucket = ? AND seq = ?", True),
            "seal_messages": (
                f"DELETE FROM {m} USING TIMESTAMP ? WHERE conversation_id = ? AND bucket = ?"
                " AND seq > ? AND seq <= ?", True),
            "write_inbox": (
                f"INSERT INTO {ks}.inbox (user_id, bucket, inbox_seq, conversation_id, seq,"
                " added_at_ms) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?", True),
            "top_cid": (
                f"SELECT cid FROM {ks}.sends WHERE conversation_id = ? AND sender = ?"
                " AND sender_device = ? AND cid_bucket = ? ORDER BY cid DESC LIMIT 1", True),
            "set_conversation_head": (
                f"UPDATE {ks}.conversation_heads USING TIMESTAMP ? SET head_seq = ?"
                " WHERE conversation_id = ?", True),
            "seal_inbox": (
                f"DELETE FROM {ks}.inbox USING TIMESTAMP ? WHERE user_id = ? AND bucket = ?"
                " AND inbox_seq > ? AND inbox_seq <= ?", True),
        }
        names = [f.name for f in fields(cls)]
        prepared = await asyncio.gather(
            *(db.prepare(queries[name][0], idempotent=queries[name][1], kind=name)
              for name in names))
        statements = cls(**dict(zip(names, prepared, strict=True)))
        # A home is decided once for every region sharing the keyspace (a replica per
        # datacenter): its Paxos round spans every datacenter, whatever the settings'
        # serial consistency (LOCAL_SERIAL would let each datacenter decide alone).
        # Homes change rarely (placement, moves, failover): the cross-datacenter round
        # trip is paid per chat, not per message (docs/architecture.md, "Regions on CQL").
        for statement in (statements.insert_home, statements.update_home):
            statement.serial_consistency_level = ConsistencyLevel.SERIAL
        return statements


