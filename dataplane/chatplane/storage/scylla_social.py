"""The social layer of the ScyllaDB backend: members, reads, lists, relations.

Membership is sequenced: a group change travels inside its system message
(the `membership` column of the timeline row), and is applied with the
message's seq as the CQL write timestamp of every row it touches (members,
user_conversations, name, member count). So the change is idempotent and
ordered by seq: re-applied after a crash (scylla_heads.py finishes unfinished
messages) or applied twice, it never undoes a later change. Read positions
use their own value as the timestamp, so they only move forward.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Sequence
from typing import Any

from cassandra.query import BatchStatement, BatchType

from chatplane.storage import cql
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    ConversationSummary,
    Member,
    MembershipChange,
    Relation,
    StoredMessage,
)
from chatplane.storage.scylla_statements import Statements

UNREAD_SCAN_LIMIT = 5000  # unread counts saturate here (a scan of the timeline)
IN_CHUNK = 100


def encode_change(change: MembershipChange) -> str:
    return json.dumps({"create": change.create, "name": change.name,
                       "add": [list(pair) for pair in change.add], "remove": list(change.remove),
                       "roles": [list(pair) for pair in change.roles],
                       "dissolve": change.dissolve})


def decode_change(text: str) -> MembershipChange:
    data = json.loads(text)
    return MembershipChange(
        create=bool(data["create"]), name=data["name"],
        add=tuple((u, r) for u, r in data["add"]), remove=tuple(data["remove"]),
        roles=tuple((u, r) for u, r in data["roles"]), dissolve=bool(data["dissolve"]))


def members_after(before: Sequence[str], change: MembershipChange) -> list[str]:
    after = set(before) | {user for user, _ in change.add}
    return sorted(after - set(change.remove))


async def add_member(db: cql.CqlSession, st: Statements, conversation_id: str, kind: str,
                     user: str, role: str, joined_seq: int) -> None:
    await asyncio.gather(
        db.run(st.put_member, (conversation_id, user, role, joined_seq, joined_seq)),
        db.run(st.join_conversation, (joined_seq, kind, joined_seq, user, conversation_id)))


async def member_ids(db: cql.CqlSession, st: Statements, conversation_id: str) -> list[str]:
    return [row["user_id"] for row in await db.run(st.select_members, (conversation_id,))]


async def apply_change(db: cql.CqlSession, st: Statements, conversation_id: str,
                       change: MembershipChange, seq: int, now_ms: int) -> None:
    """Every row of a group change, written at timestamp `seq` (idempotent)."""
    jobs: list[Awaitable[object]] = []
    if change.name is not None:
        jobs.append(db.run(st.set_conversation_name, (seq, change.name, conversation_id)))
    for user, role in change.add:
        jobs.append(add_member(db, st, conversation_id, GROUP, user, role, seq))
    for user in change.remove:
        jobs.append(db.run(st.delete_member, (seq, conversation_id, user)))
        jobs.append(db.run(st.leave_conversation, (seq, seq, user, conversation_id)))
    if change.dissolve:
        jobs.append(db.run(st.set_conversation_extra,
                           (seq, "dissolved", str(now_ms), conversation_id)))
    await cql.gather_bounded(jobs)
    current = set(await member_ids(db, st, conversation_id))
    await cql.gather_bounded(db.run(st.set_role, (seq, role, conversation_id, user))
                             for user, role in change.roles if user in current)
    await db.run(st.set_conversation_facts, (seq, len(current), now_ms, conversation_id))


def relation_from_row(row: dict[str, Any]) -> Relation:
    return Relation(bool(row["friend"]), bool(row["request_sent"]),
                    bool(row["request_received"]), row["note"] or "", bool(row["blocked"]),
                    int(row["updated_at_ms"] or 0))


class SocialMethods:
    """The social half of the Storage interface; ScyllaStorage mixes it in."""

    _parts: Any
    _message_at: Any

    async def members(self, conversation_id: str) -> list[Member]:
        db, st, _ = self._parts()
        rows = await db.run(st.select_members, (conversation_id,))
        return [Member(r["user_id"], r["role"] or "member", int(r["joined_seq"] or 0))
                for r in rows]

    async def mark_read(self, user_id: str, conversation_id: str, seq: int,
                        *, dry_run: bool = False) -> tuple[int, int]:
        db, st, heads = self._parts()
        if not await db.run(st.select_user_conversation, (user_id, conversation_id)):
            return 0, 0
        rows, head = await asyncio.gather(
            db.run(st.select_read, (conversation_id, user_id)),
            heads.conversation_head(conversation_id, serial=False))
        previous = int(rows[0]["read_seq"] or 0) if rows else 0
        current = max(previous, min(seq, head))
        if current != previous and not dry_run:
            await db.run(st.set_read, (current, current, conversation_id, user_id))
        return previous, current

    async def read_positions(self, conversation_id: str) -> dict[str, int]:
        db, st, _ = self._parts()
        users, rows = await asyncio.gather(member_ids(db, st, conversation_id),
                                           db.run(st.select_reads, (conversation_id,)))
        reads = {r["user_id"]: int(r["read_seq"] or 0) for r in rows}
        return {user: reads.get(user, 0) for user in users}

    async def membership_span(self, user_id: str, conversation_id: str) -> tuple[int, int] | None:
        db, st, _ = self._parts()
        rows = await db.run(st.select_user_conversation, (user_id, conversation_id))
        if not rows or rows[0]["joined_seq"] is None:
            return None
        return int(rows[0]["joined_seq"]), int(rows[0]["left_seq"] or 0)

    async def _facts(self, conversation_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        db, st, _ = self._parts()
        ids = list(conversation_ids)
        chunks = await cql.gather_bounded(db.run(st.heads_in, (ids[i:i + IN_CHUNK],))
                                          for i in range(0, len(ids), IN_CHUNK))
        return {row["conversation_id"]: row for rows in chunks for row in rows}

    async def _current(self, user_id: str) -> list[dict[str, Any]]:
        db, st, _ = self._parts()
        return [row for row in await db.run(st.user_conversations, (user_id,))
                if row["joined_seq"] is not None and not row["left_seq"]]

    async def large_groups_of(self, user_id: str, threshold: int) -> list[tuple[str, int, int]]:
        _, _, heads = self._parts()
        rows = [r for r in await self._current(user_id) if r["kind"] == GROUP]
        facts = await self._facts([r["conversation_id"] for r in rows])
        large = [r for r in rows
                 if int(facts.get(r["conversation_id"], {}).get("member_count") or 0) > threshold]
        found = await cql.gather_bounded(heads.conversation_head(r["conversation_id"],
                                                                 serial=False) for r in large)
        return [(r["conversation_id"], head, int(r["joined_seq"]))
                for r, head in zip(large, found, strict=True)]

    async def conversations_of(self, user_id: str, limit: int,
                               before: tuple[int, str] | None = None) -> list[ConversationSummary]:
        rows = [r for r in await self._current(user_id) if r["kind"] != EVENTS]
        facts = await self._facts([r["conversation_id"] for r in rows])

        def activity(row: dict[str, Any]) -> tuple[int, str]:
            fact = facts.get(row["conversation_id"], {})
            return int(fact.get("last_activity_ms") or 0), row["conversation_id"]

        ordered = sorted(rows, key=activity, reverse=True)
        if before is not None:
            ordered = [r for r in ordered if activity(r) < before]
        chosen = ordered[:max(limit, 0)]
        return await cql.gather_bounded(
            self._summary(user_id, r, activity(r)[0], facts.get(r["conversation_id"], {}))
            for r in chosen)

    async def _summary(self, user_id: str, row: dict[str, Any], last_activity: int,
                       fact: dict[str, Any]) -> ConversationSummary:
        db, st, heads = self._parts()
        conversation_id = row["conversation_id"]
        found, head, reads = await asyncio.gather(
            db.run(st.select_conversation, (conversation_id,)),
            heads.conversation_head(conversation_id, serial=False),
            db.run(st.select_read, (conversation_id, user_id)))
        read_seq = int(reads[0]["read_seq"] or 0) if reads else 0
        last: StoredMessage | None = await self._message_at(conversation_id, head) if head else None
        unread = await self._unread(conversation_id, user_id,
                                    max(read_seq, int(row["joined_seq"] or 0)), head)
        kind = (found[0]["kind"] if found else None) or row["kind"] or DIRECT
        name = (found[0]["name"] if found else None) or ""
        if kind == DIRECT and not name:
            peers = [m for m in conversation_id.split(":")[1:] if m != user_id]
            name = peers[0] if peers else user_id
        return ConversationSummary(conversation_id, kind, name, int(fact.get("member_count") or 0),
                                   head, read_seq, unread, last_activity, last)

    async def _unread(self, conversation_id: str, user_id: str, after: int, head: int) -> int:
        db, st, heads = self._parts()
        count, low = 0, after + 1
        high = min(head, after + UNREAD_SCAN_LIMIT)
        while low <= high:
            bucket = heads.message_bucket_of(low)
            top = min(high, (bucket + 1) * heads.message_bucket)
            rows = await db.run(st.timeline_senders, (conversation_id, bucket, low, top))
            count += sum(1 for r in rows if r["sender"] != user_id
                         and not (r["content_type"] or "").startswith("system/"))
            low = top + 1
        return count

    async def relation(self, user_id: str, other: str) -> Relation:
        db, st, _ = self._parts()
        rows = await db.run(st.select_relation, (user_id, other))
        return relation_from_row(rows[0]) if rows else Relation()

    async def put_relations(self, changes: Sequence[tuple[str, str, Relation]]) -> None:
        db, st, _ = self._parts()
        batch = BatchStatement(batch_type=BatchType.LOGGED)  # all rows or, eventually, all
        for user, other, r in changes:
            if not (r.friend or r.request_sent or r.request_received or r.blocked):
                batch.add(st.delete_relation, (user, other))
            else:
                batch.add(st.put_relation, (user, other, r.friend, r.request_sent,
                                            r.request_received, r.note, r.blocked,
                                            r.updated_at_ms))
        if len(batch):
            await db.run(batch)

    async def relations(self, user_id: str) -> list[tuple[str, Relation]]:
        db, st, _ = self._parts()
        return [(row["other"], relation_from_row(row))
                for row in await db.run(st.select_relations, (user_id,))]

    async def put_invitation(self, conversation_id: str, user_id: str, inviter: str,
                             now_ms: int) -> None:
        db, st, _ = self._parts()
        batch = BatchStatement(batch_type=BatchType.LOGGED)  # both rows, or eventually both
        batch.add(st.put_invitation, (conversation_id, user_id, inviter, now_ms))
        batch.add(st.put_user_invitation, (user_id, conversation_id, inviter, now_ms))
        await db.run(batch)

    async def take_invitation(self, conversation_id: str, user_id: str) -> str | None:
        db, st, _ = self._parts()
        rows = await db.run(st.select_invitation, (conversation_id, user_id), serial_read=True)
        if not rows:
            return None
        inviter = str(rows[0]["inviter"])
        taken = await db.run(st.take_invitation, (conversation_id, user_id, inviter))
        if not (taken and taken[0].get("[applied]")):
            return None
        await db.run(st.delete_user_invitation, (user_id, conversation_id))
        return inviter

    async def invitations(self, user_id: str) -> list[tuple[str, str, int]]:
        db, st, _ = self._parts()
        rows = [(str(r["conversation_id"]), str(r["inviter"]), int(r["at_ms"] or 0))
                for r in await db.run(st.select_user_invitations, (user_id,))]
        return sorted(rows, key=lambda r: (-r[2], r[0]))
