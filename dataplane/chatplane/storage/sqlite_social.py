"""The social layer's tables on SQLite: members, per-user conversation state
(read position, join and leave), relations (friends, requests, blocks) and
group invitations. Functions here run on a connection inside the caller's
transaction; sqlite.py decides which thread and which transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    ConversationSummary,
    Member,
    MembershipChange,
    Relation,
    StoredMessage,
)

SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS members (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_conversations (
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    read_seq INTEGER NOT NULL DEFAULT 0,
    joined_seq INTEGER NOT NULL DEFAULT 0,
    left_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS relations (
    user_id TEXT NOT NULL,
    other TEXT NOT NULL,
    friend INTEGER NOT NULL,
    request_sent INTEGER NOT NULL,
    request_received INTEGER NOT NULL,
    note TEXT NOT NULL,
    blocked INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, other)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invitations (
    conversation_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    inviter TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS invitations_by_user ON invitations (user_id, at_ms);
"""


def migrate_to_v2(db: sqlite3.Connection) -> None:
    """v1 -> v2: names and activity on conversations, the social tables, and
    members / per-user rows for the 1:1 conversations v1 knew."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(conversations)")}
    if "name" not in columns:
        db.execute("ALTER TABLE conversations ADD COLUMN name TEXT NOT NULL DEFAULT ''")
    if "last_activity_ms" not in columns:
        db.execute("ALTER TABLE conversations ADD COLUMN last_activity_ms INTEGER NOT NULL"
                   " DEFAULT 0")
        db.execute("UPDATE conversations SET last_activity_ms = COALESCE((SELECT sent_at_ms FROM"
                   " messages m WHERE m.conversation_id = conversations.id AND"
                   " m.seq = conversations.head_seq), created_at_ms)")
    for statement in SCHEMA_V2.split(";"):  # not executescript: it would commit
        if statement.strip():
            db.execute(statement)
    for conversation_id, members in db.execute("SELECT id, members FROM conversations").fetchall():
        for user in json.loads(members):
            add_member_rows(db, conversation_id, user, "member", 0)


def add_member_rows(db: sqlite3.Connection, conversation_id: str, user: str, role: str,
                    joined_seq: int) -> None:
    add_members(db, conversation_id, ((user, role),), joined_seq)


def add_members(db: sqlite3.Connection, conversation_id: str, users: Sequence[tuple[str, str]],
                joined_seq: int) -> None:
    """Member rows for (user, role) pairs; one statement each for all of them,
    so a 1,000-member group holds the writer as short as it can."""
    db.executemany(
        "INSERT INTO members (conversation_id, user_id, role, joined_seq) VALUES (?,?,?,?)"
        " ON CONFLICT DO UPDATE SET role = excluded.role, joined_seq = excluded.joined_seq",
        [(conversation_id, user, role, joined_seq) for user, role in users])
    db.executemany(
        "INSERT INTO user_conversations (user_id, conversation_id, joined_seq, left_seq)"
        " VALUES (?,?,?,0) ON CONFLICT DO UPDATE SET joined_seq = excluded.joined_seq,"
        " left_seq = 0", [(user, conversation_id, joined_seq) for user, _ in users])


def member_ids(db: sqlite3.Connection, conversation_id: str) -> tuple[str, ...]:
    return tuple(row[0] for row in db.execute(
        "SELECT user_id FROM members WHERE conversation_id = ? ORDER BY user_id",
        (conversation_id,)))


def members(db: sqlite3.Connection, conversation_id: str) -> list[Member]:
    return [Member(*row) for row in db.execute(
        "SELECT user_id, role, joined_seq FROM members WHERE conversation_id = ? ORDER BY user_id",
        (conversation_id,))]


def apply_change(db: sqlite3.Connection, conversation_id: str, change: MembershipChange,
                 event_seq: int, now_ms: int) -> None:
    """Everything of a group change but the event itself (sqlite.py appends it)."""
    if change.name is not None:
        db.execute("UPDATE conversations SET name = ? WHERE id = ?", (change.name, conversation_id))
    add_members(db, conversation_id, change.add, event_seq)
    for user in change.remove:
        db.execute("DELETE FROM members WHERE conversation_id = ? AND user_id = ?",
                   (conversation_id, user))
        db.execute("UPDATE user_conversations SET left_seq = ? WHERE user_id = ? AND"
                   " conversation_id = ?", (event_seq, user, conversation_id))
    for user, role in change.roles:
        db.execute("UPDATE members SET role = ? WHERE conversation_id = ? AND user_id = ?",
                   (role, conversation_id, user))
    if change.dissolve:
        row = db.execute("SELECT extra FROM conversations WHERE id = ?",
                         (conversation_id,)).fetchone()
        extra = json.loads(row[0]) if row else {}
        extra["dissolved"] = str(now_ms)
        db.execute("UPDATE conversations SET extra = ? WHERE id = ?",
                   (json.dumps(extra), conversation_id))


def advance_read(db: sqlite3.Connection, user: str, conversation_id: str, seq: int,
                 head: int, dry_run: bool = False) -> tuple[int, int]:
    row = db.execute("SELECT read_seq FROM user_conversations WHERE user_id = ? AND"
                     " conversation_id = ?", (user, conversation_id)).fetchone()
    if row is None:
        return 0, 0
    previous = row[0]
    current = max(previous, min(seq, head))
    if current != previous and not dry_run:
        db.execute("UPDATE user_conversations SET read_seq = ? WHERE user_id = ? AND"
                   " conversation_id = ?", (current, user, conversation_id))
    return previous, current


def read_positions(db: sqlite3.Connection, conversation_id: str) -> dict[str, int]:
    return dict(db.execute(
        "SELECT m.user_id, COALESCE(uc.read_seq, 0) FROM members m LEFT JOIN user_conversations uc"
        " ON uc.user_id = m.user_id AND uc.conversation_id = m.conversation_id"
        " WHERE m.conversation_id = ?", (conversation_id,)).fetchall())


def conversations_of(db: sqlite3.Connection, user: str, limit: int,
                     before: tuple[int, str] | None, message_columns: str,
                     to_message: Any) -> list[ConversationSummary]:
    cursor = before if before is not None else (2**62, "\U0010ffff")
    rows = db.execute(
        "SELECT c.id, c.kind, c.name, c.head_seq, c.last_activity_ms, uc.read_seq, uc.joined_seq,"
        " (SELECT COUNT(*) FROM members m WHERE m.conversation_id = c.id)"
        " FROM user_conversations uc JOIN conversations c ON c.id = uc.conversation_id"
        " WHERE uc.user_id = ? AND uc.left_seq = 0 AND c.kind != ?"
        " AND (c.last_activity_ms < ? OR (c.last_activity_ms = ? AND c.id < ?))"
        " ORDER BY c.last_activity_ms DESC, c.id DESC LIMIT ?",
        (user, EVENTS, cursor[0], cursor[0], cursor[1], limit)).fetchall()
    result = []
    for cid, kind, name, head, activity, read_seq, joined_seq, count in rows:
        last: StoredMessage | None = None
        if head:
            row = db.execute(f"SELECT {message_columns} FROM messages WHERE conversation_id = ?"
                             " AND seq = ?", (cid, head)).fetchone()
            last = to_message(row) if row else None
        unread = db.execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND seq > ? AND sender != ?"
            " AND content_type NOT LIKE 'system/%'",
            (cid, max(read_seq, joined_seq), user)).fetchone()[0]
        if kind == DIRECT and not name:
            peers = [m for m in cid.split(":")[1:] if m != user]
            name = peers[0] if peers else user
        result.append(ConversationSummary(cid, kind, name, count, head, read_seq, unread,
                                          activity, last))
    return result


def relation(db: sqlite3.Connection, user: str, other: str) -> Relation:
    row = db.execute("SELECT friend, request_sent, request_received, note, blocked, updated_at_ms"
                     " FROM relations WHERE user_id = ? AND other = ?", (user, other)).fetchone()
    if row is None:
        return Relation()
    return Relation(bool(row[0]), bool(row[1]), bool(row[2]), row[3], bool(row[4]), row[5])


def put_relations(db: sqlite3.Connection, changes: Sequence[tuple[str, str, Relation]]) -> None:
    for user, other, r in changes:
        if not (r.friend or r.request_sent or r.request_received or r.blocked):
            db.execute("DELETE FROM relations WHERE user_id = ? AND other = ?", (user, other))
            continue
        db.execute(
            "INSERT INTO relations (user_id, other, friend, request_sent, request_received, note,"
            " blocked, updated_at_ms) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
            " friend = excluded.friend, request_sent = excluded.request_sent,"
            " request_received = excluded.request_received, note = excluded.note,"
            " blocked = excluded.blocked, updated_at_ms = excluded.updated_at_ms",
            (user, other, r.friend, r.request_sent, r.request_received, r.note, r.blocked,
             r.updated_at_ms))


def relations(db: sqlite3.Connection, user: str) -> list[tuple[str, Relation]]:
    return [(row[0], Relation(bool(row[1]), bool(row[2]), bool(row[3]), row[4], bool(row[5]),
                              row[6]))
            for row in db.execute(
                "SELECT other, friend, request_sent, request_received, note, blocked,"
                " updated_at_ms FROM relations WHERE user_id = ? ORDER BY other", (user,))]


def ensure_relations_log(db: sqlite3.Connection, conversation_id: str, now_ms: int) -> None:
    """The timeline that carries a home region's friend changes to its peers
    (regions/social.py): a conversation with no members, so no client reads it and
    no inbox entry names it; its home row puts it in the replicated log."""
    db.execute("INSERT OR IGNORE INTO conversations (id, kind, members, head_seq, created_at_ms,"
               " last_activity_ms) VALUES (?, ?, '[]', 0, ?, ?)",
               (conversation_id, EVENTS, now_ms, now_ms))


def merge_reads(db: sqlite3.Connection, reads: Sequence[tuple[str, str, int]]) -> None:
    """Read positions another region recorded (user, conversation, read_seq): each
    kept when higher (a position only moves forward, so merging is idempotent and
    order-free). A row not here yet (its conversation not replicated yet) is made with
    the position; the membership that arrives later keeps it."""
    db.executemany(
        "INSERT INTO user_conversations (user_id, conversation_id, read_seq) VALUES (?,?,?)"
        " ON CONFLICT DO UPDATE SET read_seq = max(read_seq, excluded.read_seq)", reads)
