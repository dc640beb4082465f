"""The ScyllaDB backend of `Storage` (any CQL server: ScyllaDB, Cassandra).

Layout (migrations.py): a conversation's timeline in partitions of
(conversation, seq bucket); each user's inbox in partitions of (user, inbox
bucket) holding references (conversation, seq) to the timeline; a send log
(conversation, sender, device, cid bucket) -> seq for idempotent resends.

Sequencing (docs/storage.md, "Seq blocks and the fence"): each conversation
and each inbox is a sequence this process holds (scylla_seq.py): numbers come
from memory, one conditional write reserves a block of them or takes the
sequence over (sealing what a previous holder may still write), and messages
are plain writes, batched (scylla_append.py). In this process appends to one
conversation and entries in one user's inbox are serialised by asyncio locks.

Atomicity without multi-partition transactions: the message row carries its
recipients and is marked `fanned_out` once the rest is written. Only a
conversation's last message can be unfinished (appends to it are serial), and
whoever next takes the conversation finishes it first (send log, inbox
entries, mark), so a crash between the steps loses nothing and a resend finds
the original.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from chatplane.storage import cql, migrations
from chatplane.storage import scylla_social as social
from chatplane.storage.base import (
    DIRECT,
    EVENTS,
    GROUP,
    MEMBER,
    AppendResult,
    Conversation,
    Home,
    InboxItem,
    MembershipChange,
    Recovered,
    Revocation,
    SendRequest,
    StorageError,
    StorageUnavailable,
    StoredMessage,
    direct_conversation_id,
    events_conversation_id,
    home_replaces,
)
from chatplane.storage.scylla_append import RECOVER_TAIL, Appender
from chatplane.storage.scylla_flush import Flusher
from chatplane.storage.scylla_heads import Heads
from chatplane.storage.scylla_statements import Statements, message_from_row

if TYPE_CHECKING:
    from chatplane.settings import Settings



class ScyllaStorage(social.SocialMethods):
    """`Storage` on a CQL cluster. `open()` needs a migrated keyspace."""

    name = "scylla"
    store_id = ""  # set by open()

    def __init__(self, settings: cql.CqlSettings, *, sole_writer: bool = False) -> None:
        self.settings = settings
        # sole_writer: unfenced appends come from this process alone (`chatplane
        # up`), so they skip the checks (docs/storage.md, "Seq blocks and the fence").
        self.sole_writer = sole_writer
        self._db: cql.CqlSession | None = None
        self._st: Statements | None = None
        self._heads: Heads | None = None
        self._appender: Appender | None = None
        self._flusher: Flusher | None = None
        self._known: set[str] = set()
        self._users_here: Callable[[Sequence[str]], Awaitable[list[str]]] | None = None
        self._recovered: Recovered | None = None

    def serve_users(self, users_here: Callable[[Sequence[str]], Awaitable[list[str]]],
                    recovered: Recovered | None = None) -> None:
        """Regions share this keyspace (docs/architecture.md, "Regions on CQL"): the
        entries a take's recovery writes again are those of the users `users_here`
        keeps (this region's); the others' are their home region's to write."""
        self._users_here, self._recovered = users_here, recovered
        if self._appender is not None:
            self._appender.users_here, self._appender.recovered = users_here, recovered

    async def open(self) -> None:
        keyspace = cql.check_keyspace_name(self.settings.keyspace)
        cql.consistency_level(self.settings.consistency)
        db = await cql.connect(self.settings)
        try:
            buckets = await migrations.check(db, keyspace)
            st = await Statements.prepare(db, keyspace)
            self.store_id = await migrations.store_id(db, keyspace)
        except StorageUnavailable as exc:
            await db.close(quiet=True)
            raise StorageError(f"CQL cluster {self.settings.hosts} unusable: {exc}") from exc
        except BaseException:
            await db.close(quiet=True)
            raise
        self._db, self._st = db, st
        self._heads = Heads(db, st, buckets["message_bucket"], buckets["inbox_bucket"],
                            buckets["cid_bucket"])
        self._appender = Appender(db, st, self._heads, self.settings.seq_block)
        self._appender.users_here, self._appender.recovered = self._users_here, self._recovered
        self._flusher = Flusher(self)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    def families(self) -> Iterable[Metric]:
        """What the write path costs (cql_metrics.py); the server reports the rest."""
        return self._db.stats.families() if self._db is not None else ()

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

    async def append(self, request: SendRequest, recipients: Sequence[str],
                     inboxes: Collection[str] | None = None) -> AppendResult:
        return await self._sequence(request, recipients, None, inboxes)

    async def apply_membership(self, conversation_id: str, change: MembershipChange,
                               event: SendRequest,
                               recipients: Sequence[str] | None = None,
                               inboxes: Collection[str] | None = None) -> AppendResult:
        if event.conversation_id != conversation_id:
            raise StorageError(f"event for {event.conversation_id} applied to {conversation_id}")
        if change.create:
            await self._create(conversation_id, GROUP, event.sent_at_ms, ())
        return await self._sequence(event, recipients, change, inboxes)

    async def _sequence(self, request: SendRequest, recipients: Sequence[str] | None,
                        change: MembershipChange | None,
                        inboxes: Collection[str] | None) -> AppendResult:
        if self._flusher is None:
            raise StorageUnavailable("storage is not open")
        return await self._flusher.submit(request, recipients, change,
                                          None if inboxes is None else frozenset(inboxes))

    async def fan_out(self, conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]],
                      fresh: Collection[int] = ()) -> list[InboxItem]:
        appender = self._appender
        if appender is None:
            raise StorageUnavailable("storage is not open")
        return await appender.fan_out(conversation_id, entries, verify=not self.sole_writer,
                                      fresh=frozenset(fresh))

    async def fanned_out(self, conversation_id: str, seqs: Sequence[int]) -> None:
        if self._appender is not None:
            self._appender.finished(conversation_id, seqs)

    async def unfinished(self, conversation_id: str) -> list[tuple[int, tuple[str, ...]]]:
        """The newest messages without their done mark (a take's recovery
        finished and marked the older ones; these may just wait for the next
        batch's mark): fanning them out again finds their entries."""
        _, _, heads = self._parts()
        appender = self._appender
        assert appender is not None
        async with heads.conversation_state(conversation_id).lock:
            try:
                holder = await appender.conversation_holder(conversation_id, None)
            except BaseException:
                appender.drop_conversation(conversation_id)
                raise
        rows = await heads.timeline_rows_down(conversation_id, holder.next - 1, RECOVER_TAIL)
        return [(int(row["seq"]), tuple(row["recipients"] or ())) for row in rows
                if not row["fanned_out"] and row["recipients"]]

    # -- sequencing leases (docs/storage.md, "Seq blocks and the fence") -------

    async def acquire(self, conversation_id: str, owner: str) -> int:
        _, _, heads = self._parts()
        appender = self._appender
        assert appender is not None
        async with heads.conversation_state(conversation_id).lock:
            try:
                holder = await appender.take_conversation(conversation_id, raise_epoch=True,
                                                          epoch=None, owner=owner)
            except BaseException:
                appender.drop_conversation(conversation_id)
                raise
            return holder.epoch

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

    # -- home regions ----------------------------------------------------------

    async def home(self, kind: str, key: str) -> Home | None:
        db, st, _ = self._parts()
        rows = await db.run(st.select_home, (kind, key), serial_read=True,
                            across_datacenters=True)
        return _home(rows[0]) if rows else None

    async def offer_home(self, kind: str, key: str, offered: Home) -> Home:
        """A compare-and-set loop: each round reads what the last conditional
        write found and offers again against exactly that row."""
        db, st, _ = self._parts()
        rows = await db.run(st.insert_home, (kind, key, offered.region, offered.epoch,
                                             offered.confirmed))
        for _ in range(16):
            if rows[0].get("[applied]"):
                return offered
            existing = _home(rows[0])
            if not home_replaces(existing, offered):
                return existing
            rows = await db.run(st.update_home, (
                offered.region, offered.epoch, offered.confirmed, kind, key,
                existing.region, existing.epoch, existing.confirmed))
        raise StorageUnavailable(f"home of {kind} {key!r} kept changing under offer_home")


def _home(row: cql.Row) -> Home:
    return Home(row["region"], int(row["epoch"]), bool(row["confirmed"]))


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
        serial_consistency=config.cql_serial_consistency,
        write_consistency=config.cql_write_consistency,
        local_dc=config.cql_datacenter or None,
        replication=cql.parse_replication(replication),
        username=config.cql_username, password=config.cql_password,
        tls_ca=settings.tls.cql_ca, tls_cert=settings.tls.cql_cert, tls_key=settings.tls.cql_key)


def from_settings(settings: Settings, *, sole_writer: bool = False) -> ScyllaStorage:
    """The backend `chatplane.settings.Settings` describes (not opened yet)."""
    return ScyllaStorage(cql_settings(settings), sole_writer=sole_writer)
