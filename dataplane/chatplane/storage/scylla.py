"""The ScyllaDB backend of `Storage` (any CQL server: ScyllaDB, Cassandra).

Layout (migrations.py): a conversation's timeline in partitions of
(conversation, seq bucket); each user's inbox in partitions of (user, inbox
bucket) holding references (conversation, seq) to the timeline; a send log
(conversation, sender, device, cid bucket) -> seq for idempotent resends.

Sequencing (docs/storage.md, "Sequence allocation"): the timeline row *is* the
claim. Seq n is taken by `INSERT ... IF NOT EXISTS` of the message at n, a
lightweight transaction, so two writers can never both own n, whoever they
are and whatever Redis remembers. A writer that loses the race, or starts cold,
reads the head back from the timeline with a SERIAL read. Inbox entries are
claimed the same way per user. In this process, appends to one conversation
and claims in one user's inbox are serialised by asyncio locks, so the
conditional writes only ever contend across processes.

Atomicity without multi-partition transactions: the message row carries its
recipients and is marked `fanned_out` last. Only a conversation's head message
can be unfinished (appends to it are serial), and whoever next loads that
conversation's head finishes it first (send log, inbox entries, mark), so a
crash between the steps loses nothing and a resend finds the original.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from chatplane.storage import cql, migrations
from chatplane.storage.base import (
    DIRECT,
    AppendResult,
    Conversation,
    ConversationNotFound,
    InboxItem,
    SendRequest,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    direct_conversation_id,
)
from chatplane.storage.scylla_heads import Heads
from chatplane.storage.scylla_statements import Statements, message_from_row

if TYPE_CHECKING:
    from chatplane.settings import Settings

MAX_CLAIM_ATTEMPTS = 50


def _now_ms() -> int:
    return int(time.time() * 1000)


class ScyllaStorage:
    """`Storage` on a CQL cluster. `open()` needs a migrated keyspace."""

    name = "scylla"

    def __init__(self, settings: cql.CqlSettings) -> None:
        self.settings = settings
        self._db: cql.CqlSession | None = None
        self._st: Statements | None = None
        self._heads: Heads | None = None
        self._known: set[str] = set()

    async def open(self) -> None:
        keyspace = cql.check_keyspace_name(self.settings.keyspace)
        cql.consistency_level(self.settings.consistency)
        db = await cql.connect(self.settings)
        try:
            buckets = await migrations.check(db, keyspace)
            st = await Statements.prepare(db, keyspace)
        except StorageUnavailable as exc:
            await db.close()
            raise StorageError(f"CQL cluster {self.settings.hosts} unusable: {exc}") from exc
        except BaseException:
            await db.close()
            raise
        self._db, self._st = db, st
        self._heads = Heads(db, st, buckets["message_bucket"], buckets["inbox_bucket"],
                            buckets["cid_bucket"])

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def _parts(self) -> tuple[cql.CqlSession, Statements, Heads]:
        if self._db is None or self._st is None or self._heads is None:
            raise StorageUnavailable("storage is not open")
        return self._db, self._st, self._heads

    # -- conversations -------------------------------------------------------

    async def ensure_direct(self, a: str, b: str, now_ms: int) -> Conversation:
        db, st, _ = self._parts()
        conversation_id = direct_conversation_id(a, b)
        members = sorted({a, b})
        rows = await db.run(st.insert_conversation,
                            (conversation_id, DIRECT, members, now_ms, {}))
        self._remember(conversation_id)
        if rows and rows[0].get("[applied]"):
            return Conversation(conversation_id, DIRECT, tuple(members), 0, now_ms, {})
        found = await self.conversation(conversation_id)
        if found is None:  # the LWT that won has not reached a quorum we read from
            raise StorageUnavailable(f"conversation {conversation_id} vanished after create")
        return found

    async def conversation(self, conversation_id: str) -> Conversation | None:
        db, st, heads = self._parts()
        rows = await db.run(st.select_conversation, (conversation_id,))
        if not rows:
            return None
        row = rows[0]
        head = await heads.conversation_head(conversation_id, serial=False)
        return Conversation(
            conversation_id=conversation_id, kind=row["kind"] or DIRECT,
            members=tuple(row["members"] or ()), head_seq=head,
            created_at_ms=row["created_at_ms"] or 0, extra=dict(row["extra"] or {}))

    def _remember(self, conversation_id: str) -> None:
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.add(conversation_id)

    async def _exists(self, conversation_id: str) -> bool:
        if conversation_id in self._known:
            return True
        db, st, _ = self._parts()
        if await db.run(st.select_conversation, (conversation_id,)):
            self._remember(conversation_id)
            return True
        return False

    # -- append --------------------------------------------------------------

    async def append(self, request: SendRequest, recipients: Sequence[str]) -> AppendResult:
        _, _, heads = self._parts()
        state = heads.conversation_state(request.conversation_id)
        async with state.lock:
            try:
                if state.head is None:
                    state.head = await heads.recover_conversation(request.conversation_id)
                original = await heads.find_send(request)
                if original is not None:
                    return AppendResult(original, duplicate=True)
                if not await self._exists(request.conversation_id):
                    raise ConversationNotFound(request.conversation_id)
                appended_at = _now_ms()
                message = await self._claim_seq(request, list(recipients), appended_at,
                                                state.head)
                state.head = message.seq
                await heads.record_send(message)
                inbox = await heads.fan_out(message, list(recipients), appended_at,
                                            resume=False)
                await heads.finish(message)
                return AppendResult(message, duplicate=False, inbox=tuple(inbox))
            except ConversationNotFound:
                raise
            except BaseException:
                # Unknown outcome: the next append reloads the head from the
                # timeline and finishes whatever this one left half done.
                state.head = None
                raise

    async def _claim_seq(self, request: SendRequest, recipients: list[str],
                         appended_at: int, head: int) -> StoredMessage:
        db, st, heads = self._parts()
        seq = head + 1
        for _ in range(MAX_CLAIM_ATTEMPTS):
            message = StoredMessage(
                conversation_id=request.conversation_id, seq=seq,
                message_id=request.message_id, sender=request.sender,
                sender_device=request.sender_device, cid=request.cid, text=request.text,
                sent_at_ms=request.sent_at_ms, payload=request.payload,
                content_type=request.content_type)
            params = (message.conversation_id, heads.message_bucket_of(seq), seq,
                      message.message_id, message.sender, message.sender_device, message.cid,
                      message.text, message.sent_at_ms, message.payload, message.content_type,
                      recipients, appended_at)
            try:
                rows = await db.run(st.insert_message, params)
            except StorageUnavailable:
                # Outcome unknown: a SERIAL read settles it (and completes our
                # proposal if it was accepted but not yet committed).
                rows = await heads.read_message_rows(message.conversation_id, seq, serial=True)
                if not rows:
                    continue  # not taken by anyone: try the same seq again
                rows = [{"[applied]": False, **rows[0]}]
            if rows and rows[0].get("[applied]"):
                return message
            existing = rows[0] if rows else {}
            if (existing.get("sender"), existing.get("sender_device"), existing.get("cid")) == (
                    message.sender, message.sender_device, message.cid):
                return message_from_row(existing | {"conversation_id": message.conversation_id,
                                                    "seq": seq})
            # Another writer owns this conversation too (lease overlap): catch up.
            seq = await heads.conversation_head(message.conversation_id, serial=True) + 1
        raise StorageUnavailable(
            f"could not claim a seq in {request.conversation_id} after {MAX_CLAIM_ATTEMPTS} "
            "attempts (another writer keeps winning)")

    # -- reads ---------------------------------------------------------------

    async def inbox(self, user_id: str, after_seq: int, limit: int) -> list[InboxItem]:
        _, _, heads = self._parts()
        if limit <= 0:
            return []
        refs = await heads.inbox_refs(user_id, max(after_seq, 0), limit)
        messages = await heads.messages_by_ref([(c, s) for _, c, s in refs])
        items = []
        for inbox_seq, conversation_id, seq in refs:
            message = messages.get((conversation_id, seq))
            if message is None:
                raise StorageUnavailable(
                    f"inbox {user_id}#{inbox_seq} names {conversation_id}#{seq}, not readable now")
            items.append(InboxItem(user_id, inbox_seq, message))
        return items

    async def inbox_head(self, user_id: str) -> int:
        _, _, heads = self._parts()
        return await heads.inbox_head(user_id, serial=False)

    async def history(self, conversation_id: str, *, before_seq: int | None = None,
                      after_seq: int | None = None, limit: int = 50) -> list[StoredMessage]:
        _, _, heads = self._parts()
        if limit <= 0:
            return []
        if after_seq is not None:
            top = before_seq - 1 if before_seq is not None else None
            return await heads.timeline_up(conversation_id, max(after_seq, 0) + 1, top, limit)
        if before_seq is not None:
            top = before_seq - 1
        else:
            top = await heads.conversation_head(conversation_id, serial=False)
        if top < 1:
            return []
        return await heads.timeline_down(conversation_id, top, limit)

    # -- users ---------------------------------------------------------------

    async def put_user(self, user_id: str, display_name: str, now_ms: int) -> None:
        db, st, _ = self._parts()
        await db.run(st.create_user, (user_id, now_ms))
        await db.run(st.upsert_user, (display_name, user_id))

    async def get_user(self, user_id: str) -> dict[str, str] | None:
        db, st, _ = self._parts()
        rows = await db.run(st.select_user, (user_id,))
        if not rows:
            return None
        row = rows[0]
        return {"user_id": user_id, "display_name": row["display_name"] or "",
                "created_at_ms": str(row["created_at_ms"] or 0)}


async def open_storage(settings: cql.CqlSettings) -> ScyllaStorage:
    """A ready ScyllaStorage, or StorageError with one line."""
    storage = ScyllaStorage(settings)
    await storage.open()
    return storage


def from_settings(settings: Settings) -> ScyllaStorage:
    """The backend `chatplane.settings.Settings` describes (not opened yet)."""
    config = settings.storage
    return ScyllaStorage(cql.CqlSettings.parse(
        config.cql_hosts, keyspace=config.keyspace, consistency=config.cql_consistency,
        local_dc=config.cql_datacenter or None))
