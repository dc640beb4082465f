"""The CQL statements of the ScyllaDB backend, prepared once at open().

Each is marked idempotent or not for the driver's retry policy: plain writes
at a fixed key may be re-sent; conditional inserts (the seq and inbox claims)
are never re-sent by the driver, the backend settles their outcome itself
(scylla_heads.py). Tables are created by migrations.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import Any

from cassandra.query import PreparedStatement

from chatplane.storage import cql
from chatplane.storage.base import StoredMessage

MESSAGE_COLUMNS = ("conversation_id, seq, message_id, sender, sender_device, cid, text, "
                   "sent_at_ms, payload, content_type, recipients, appended_at_ms, fanned_out")


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
    insert_message: PreparedStatement
    select_message: PreparedStatement
    messages_in: PreparedStatement
    top_seq: PreparedStatement
    timeline_range: PreparedStatement
    timeline_desc: PreparedStatement
    mark_fanned_out: PreparedStatement
    insert_send: PreparedStatement
    select_send: PreparedStatement
    insert_inbox: PreparedStatement
    select_inbox: PreparedStatement
    inbox_after: PreparedStatement
    inbox_desc: PreparedStatement
    top_inbox: PreparedStatement
    inbox_hint: PreparedStatement
    set_inbox_hint: PreparedStatement
    create_user: PreparedStatement
    upsert_user: PreparedStatement
    select_user: PreparedStatement

    @classmethod
    async def prepare(cls, db: cql.CqlSession, ks: str) -> Statements:
        m = f"{ks}.messages"
        queries: dict[str, tuple[str, bool]] = {
            "insert_conversation": (
                f"INSERT INTO {ks}.conversations (conversation_id, kind, members, created_at_ms,"
                " extra) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS", False),
            "select_conversation": (
                f"SELECT * FROM {ks}.conversations WHERE conversation_id = ?", True),
            "conversation_hint": (
                f"SELECT head_seq FROM {ks}.conversation_heads WHERE conversation_id = ?", True),
            "set_conversation_hint": (
                f"UPDATE {ks}.conversation_heads USING TIMESTAMP ? SET head_seq = ?"
                " WHERE conversation_id = ?", True),
            "insert_message": (
                f"INSERT INTO {m} (conversation_id, bucket, seq, message_id, sender,"
                " sender_device, cid, text, sent_at_ms, payload, content_type, recipients,"
                " appended_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
                False),
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
            "mark_fanned_out": (
                f"UPDATE {m} SET fanned_out = true WHERE conversation_id = ? AND bucket = ?"
                " AND seq = ?", True),
            "insert_send": (
                f"INSERT INTO {ks}.sends (conversation_id, sender, sender_device, cid_bucket,"
                " cid, seq) VALUES (?, ?, ?, ?, ?, ?)", True),
            "select_send": (
                f"SELECT seq FROM {ks}.sends WHERE conversation_id = ? AND sender = ?"
                " AND sender_device = ? AND cid_bucket = ? AND cid = ?", True),
            "insert_inbox": (
                f"INSERT INTO {ks}.inbox (user_id, bucket, inbox_seq, conversation_id, seq,"
                " added_at_ms) VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS", False),
            "select_inbox": (
                f"SELECT inbox_seq, conversation_id, seq, added_at_ms FROM {ks}.inbox"
                " WHERE user_id = ? AND bucket = ? AND inbox_seq = ?", True),
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
        }
        names = [f.name for f in fields(cls)]
        prepared = await asyncio.gather(
            *(db.prepare(queries[name][0], idempotent=queries[name][1]) for name in names))
        return cls(**dict(zip(names, prepared, strict=True)))


