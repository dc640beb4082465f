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

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from chatplane.storage import cql, migrations
from chatplane.storage import scylla_social as social
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    MEMBER,
    AppendResult,
    Conversation,
    ConversationNotFound,
    Fenced,
    InboxItem,
    MembershipChange,
    Revocation,
    SendRequest,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    direct_conversation_id,
    events_conversation_id,
)
from chatplane.storage.scylla_heads import Heads
from chatplane.storage.scylla_statements import Statements, message_from_row

if TYPE_CHECKING:
    from chatplane.settings import Settings

MAX_CLAIM_ATTEMPTS = 50


def _now_ms() -> int:
    return int(time.time() * 1000)


def _message_at(request: SendRequest, seq: int) -> StoredMessage:
    return StoredMessage(
        conversation_id=request.conversation_id, seq=seq, message_id=request.message_id,
        sender=request.sender, sender_device=request.sender_device, cid=request.cid,
        text=request.text, sent_at_ms=request.sent_at_ms, payload=request.payload,
        content_type=request.content_type)


class ScyllaStorage(social.SocialMethods):
    """`Storage` on a CQL cluster. `open()` needs a migrated keyspace."""

    name = "scylla"
    store_id = ""  # set by open()

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
            self.store_id = await migrations.store_id(db, keyspace)
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

    def metrics_text(self) -> str:
        return ""  # the CQL server reports its own latencies

    def health(self) -> list[str]:
        return []  # a failing CQL call fails its request; the driver reconnects by itself

    def _parts(self) -> tuple[cql.CqlSession, Statements, Heads]:
        if self._db is None or self._st is None or self._heads is None:
            raise StorageUnavailable("storage is not open")
        return self._db, self._st, self._heads

    # -- conversations -------------------------------------------------------

    async def _create(self, conversation_id: str, kind: str, now_ms: int,
                      members: Sequence[str]) -> bool:
        """Create the conversation (identity by LWT), then its member rows and
        facts at timestamp 0 (any later change, at its seq, wins). True if new."""
        db, st, _ = self._parts()
        rows = await db.run(st.insert_conversation, (conversation_id, kind, now_ms))
        created = bool(rows and rows[0].get("[applied]"))
        if created or (members and not await social.member_ids(db, st, conversation_id)):
            # new, or its creator died before writing the members: write them now
            await asyncio.gather(*(social.add_member(db, st, conversation_id, kind, user,
                                                     MEMBER, 0) for user in members))
            await db.run(st.set_conversation_facts, (0, len(members), now_ms, conversation_id))
        self._remember(conversation_id)
        return created

    async def ensure_direct(self, a: str, b: str, now_ms: int) -> Conversation:
        conversation_id = direct_conversation_id(a, b)
        members = sorted({a, b})
        if await self._create(conversation_id, DIRECT, now_ms, members):
            return Conversation(conversation_id, DIRECT, tuple(members), 0, now_ms, {})
        return await self._must_exist(conversation_id)

    async def ensure_events(self, user_id: str, now_ms: int) -> Conversation:
        conversation_id = events_conversation_id(user_id)
        if await self._create(conversation_id, EVENTS, now_ms, [user_id]):
            return Conversation(conversation_id, EVENTS, (user_id,), 0, now_ms, {})
        return await self._must_exist(conversation_id)

    async def _must_exist(self, conversation_id: str) -> Conversation:
        found = await self.conversation(conversation_id)
        if found is None:  # the LWT that won has not reached a quorum we read from
            raise StorageUnavailable(f"conversation {conversation_id} not readable yet")
        return found

    async def conversation(self, conversation_id: str) -> Conversation | None:
        db, st, heads = self._parts()
        rows, members, head = await asyncio.gather(
            db.run(st.select_conversation, (conversation_id,)),
            social.member_ids(db, st, conversation_id),
            heads.conversation_head(conversation_id, serial=False))
        if not rows:
            return None
        row = rows[0]
        extra = dict(row["extra"] or {})
        if row["name"]:
            extra["name"] = row["name"]
        return Conversation(
            conversation_id=conversation_id, kind=row["kind"] or DIRECT,
            members=tuple(members), head_seq=head,
            created_at_ms=row["created_at_ms"] or 0, extra=extra)

    async def _message_at(self, conversation_id: str, seq: int) -> StoredMessage | None:
        _, _, heads = self._parts()
        rows = await heads.read_message_rows(conversation_id, seq, serial=False)
        return message_from_row(rows[0]) if rows else None

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
        return await self._sequence(request, recipients, None)

    async def apply_membership(self, conversation_id: str, change: MembershipChange,
                               event: SendRequest,
                               recipients: Sequence[str] | None = None) -> AppendResult:
        if event.conversation_id != conversation_id:
            raise StorageError(f"event for {event.conversation_id} applied to {conversation_id}")
        if change.create:
            await self._create(conversation_id, GROUP, event.sent_at_ms, ())
        return await self._sequence(event, recipients, change)

    async def _sequence(self, request: SendRequest, recipients: Sequence[str] | None,
                        change: MembershipChange | None) -> AppendResult:
        db, st, heads = self._parts()
        conversation_id = request.conversation_id
        state = heads.conversation_state(conversation_id)
        async with state.lock:
            try:
                if state.head is None:
                    if request.fence is not None:  # a stale owner must not finish others' work
                        await self._check_lease(conversation_id, request.fence)
                    state.head = await heads.recover_conversation(conversation_id)
                original = await heads.find_send(request)
                if original is not None:
                    return AppendResult(original, duplicate=True)
                if not await self._exists(conversation_id):
                    raise ConversationNotFound(conversation_id)
                membership = None
                if change is not None:
                    membership = social.encode_change(change)
                    if recipients is None:
                        before = await social.member_ids(db, st, conversation_id)
                        recipients = sorted(set(before) | set(social.members_after(before,
                                                                                   change)))
                users = list(recipients or ())
                appended_at = _now_ms()
                message = await self._claim_seq(request, users, appended_at, state.head,
                                                membership)
                state.head = message.seq
                if change is not None:
                    await social.apply_change(db, st, conversation_id, change, message.seq,
                                              message.sent_at_ms)
                _, inbox = await asyncio.gather(
                    heads.record_send(message),
                    heads.fan_out(message, users, appended_at, resume=False))
                await heads.finish(message, inbox)
                return AppendResult(message, duplicate=False, inbox=tuple(inbox))
            except ConversationNotFound:
                raise
            except BaseException:
                # Unknown outcome: the next append reloads the head from the
                # timeline and finishes whatever this one left half done.
                state.head = None
                raise

    async def _claim_seq(self, request: SendRequest, recipients: list[str],
                         appended_at: int, head: int, membership: str | None) -> StoredMessage:
        db, st, heads = self._parts()
        seq = head + 1
        for _ in range(MAX_CLAIM_ATTEMPTS):
            message = _message_at(request, seq)
            if request.fence is not None:
                claimed = await self._claim_fenced(message, request.fence, recipients,
                                                   appended_at, membership)
                if claimed:
                    return message
                seq = await heads.conversation_head(message.conversation_id, serial=True) + 1
                continue
            params = (message.conversation_id, heads.message_bucket_of(seq), seq,
                      message.message_id, message.sender, message.sender_device, message.cid,
                      message.text, message.sent_at_ms, message.payload, message.content_type,
                      recipients, appended_at, membership)
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

    async def _claim_fenced(self, message: StoredMessage, fence: int, recipients: list[str],
                            appended_at: int, membership: str | None) -> bool:
        """Claim the message's seq while the partition's fence is `fence`: True
        when it is ours, False when another message holds the seq (catch up).
        Raises Fenced when a newer epoch fences the partition."""
        db, st, heads = self._parts()
        conversation_id, seq = message.conversation_id, message.seq
        bucket = heads.message_bucket_of(seq)
        params = (message.message_id, message.sender, message.sender_device, message.cid,
                  message.text, message.sent_at_ms, message.payload, message.content_type,
                  recipients, appended_at, membership, conversation_id, bucket, seq, fence)
        for _ in range(MAX_CLAIM_ATTEMPTS):
            try:
                rows = await db.run(st.claim_message_fenced, params)
            except StorageUnavailable:
                # Outcome unknown: a SERIAL read settles it (as in _claim_seq).
                rows = await heads.read_message_rows(conversation_id, seq, serial=True)
                if not rows:
                    continue
                return bool(rows[0]["message_id"] == message.message_id)
            row = rows[0] if rows else {}
            if row.get("[applied]"):
                return True
            if row.get("message_id") is not None:  # taken: ours (an earlier try) or not
                return bool(row["message_id"] == message.message_id)
            current = row.get("fence")
            if current is not None and current > fence:
                raise Fenced(f"{conversation_id}: lease epoch {fence} is stale (now {current})")
            # A partition this epoch has not fenced yet: the next bucket.
            await self._open_bucket(conversation_id, bucket, fence)
        raise StorageUnavailable(f"could not claim {conversation_id}#{seq} under epoch {fence}")

    # -- sequencing leases (docs/storage.md, "Fencing") -------------------------

    async def acquire(self, conversation_id: str, owner: str) -> int:
        _, _, heads = self._parts()
        state = heads.conversation_state(conversation_id)
        async with state.lock:
            state.head = None  # the next append reloads the head (and finishes it)
            epoch = await self._raise_lease(conversation_id, owner)
            await self._fence_head(conversation_id, epoch)
            return epoch

    async def _check_lease(self, conversation_id: str, epoch: int) -> None:
        db, st, _ = self._parts()
        rows = await db.run(st.select_lease, (conversation_id,), serial_read=True)
        current = rows[0]["epoch"] if rows else None
        if current != epoch:
            raise Fenced(f"{conversation_id}: lease epoch {epoch} is stale (now {current})")

    async def _raise_lease(self, conversation_id: str, owner: str) -> int:
        db, st, _ = self._parts()
        rows = await db.run(st.select_lease, (conversation_id,), serial_read=True)
        current = rows[0]["epoch"] if rows else None
        for _ in range(MAX_CLAIM_ATTEMPTS):
            epoch = (current or 0) + 1
            rows = await db.run(st.set_lease, (epoch, owner, conversation_id, current))
            if rows and rows[0].get("[applied]"):
                return epoch
            current = rows[0].get("epoch") if rows else None
        raise StorageUnavailable(f"could not take the lease of {conversation_id}")

    async def _fence_head(self, conversation_id: str, epoch: int) -> None:
        """Fence the partition the next seq goes to; again if the head moved
        on past it meanwhile (an older owner still appending)."""
        _, _, heads = self._parts()
        for _ in range(MAX_CLAIM_ATTEMPTS):
            head = await heads.conversation_head(conversation_id, serial=True)
            bucket = heads.message_bucket_of(head + 1)
            await self._raise_fence(conversation_id, bucket, epoch)
            head = await heads.conversation_head(conversation_id, serial=True)
            if heads.message_bucket_of(head + 1) == bucket:
                return
        raise StorageUnavailable(f"could not fence {conversation_id}")

    async def _open_bucket(self, conversation_id: str, bucket: int, epoch: int) -> None:
        """Carry the fence into the next partition, only from a full one that
        this epoch fences: a stale writer cannot open a partition ahead of the
        owner (acquire fenced the partition its head was in)."""
        db, st, _ = self._parts()
        rows = (await db.run(st.select_fence, (conversation_id, bucket - 1), serial_read=True)
                if bucket > 0 else [])
        previous = rows[0]["fence"] if rows else None
        if previous != epoch:
            raise Fenced(f"{conversation_id}: lease epoch {epoch} does not fence bucket "
                         f"{bucket - 1} (it has {previous})")
        await self._raise_fence(conversation_id, bucket, epoch)

    async def _raise_fence(self, conversation_id: str, bucket: int, epoch: int) -> None:
        """Set a partition's fence to `epoch` by compare-and-set, unless a newer
        epoch is already there (Fenced)."""
        db, st, _ = self._parts()
        expected = None
        for _ in range(MAX_CLAIM_ATTEMPTS):
            rows = await db.run(st.set_fence, (epoch, conversation_id, bucket, expected))
            row = rows[0] if rows else {}
            current = row.get("fence")
            if row.get("[applied]") or current == epoch:
                return
            if current is not None and current > epoch:
                raise Fenced(f"{conversation_id}: lease epoch {epoch} is stale (now {current})")
            expected = current
        raise StorageUnavailable(f"could not fence {conversation_id} bucket {bucket}")

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
        if before_seq is not None and before_seq <= 1:
            return []
        # Clamped to the head: walking down from a far bound would read every
        # empty bucket on the way.
        top = await heads.conversation_head(conversation_id, serial=False)
        if before_seq is not None:
            top = min(top, before_seq - 1)
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

    # -- token revocations ----------------------------------------------------

    async def put_revocation(self, revocation: Revocation) -> None:
        db, st, _ = self._parts()
        await db.run(st.put_revocation, (revocation.before_ms * 1000, revocation.before_ms,
                                         revocation.user_id, revocation.device_id))

    async def revocations(self) -> list[Revocation]:
        db, st, _ = self._parts()
        rows = await db.run(st.select_revocations, ())
        return [Revocation(r["user_id"], r["device_id"], r["before_ms"]) for r in rows]


async def open_storage(settings: cql.CqlSettings) -> ScyllaStorage:
    """A ready ScyllaStorage, or StorageError with one line."""
    storage = ScyllaStorage(settings)
    await storage.open()
    return storage


def cql_settings(settings: Settings) -> cql.CqlSettings:
    """The CQL settings `chatplane.settings.Settings` describes (for open and
    for `chatplane storage migrate`). Optional fields, read when the settings
    have them: `storage.cql_replication` ("1", "dc1=3,dc2=3" or the operator's
    JSON map; default RF 1), `storage.cql_username` / `storage.cql_password`."""
    config = settings.storage
    replication = config.cql_replication or "1"
    return cql.CqlSettings.parse(
        config.cql_hosts, keyspace=config.keyspace, consistency=config.cql_consistency,
        local_dc=config.cql_datacenter or None,
        replication=cql.parse_replication(replication),
        username=config.cql_username, password=config.cql_password,
        tls_ca=settings.tls.cql_ca, tls_cert=settings.tls.cql_cert, tls_key=settings.tls.cql_key)


def from_settings(settings: Settings) -> ScyllaStorage:
    """The backend `chatplane.settings.Settings` describes (not opened yet)."""
    return ScyllaStorage(cql_settings(settings))
