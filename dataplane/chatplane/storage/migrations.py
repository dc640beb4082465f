"""Versioned schema for the ScyllaDB backend, applied by `chatplane storage migrate`.

`migrate(settings)` creates the keyspace with the configured replication (or
alters it when the configured map differs: the operator changes it when a
region is added), then applies every numbered migration not yet recorded in
`schema_migrations`, in order. Each statement is idempotent (IF NOT EXISTS),
so a migrate that died half way, or two run at once, converge. `open()` of the
backend never changes the schema: it checks `SCHEMA_VERSION` and says to run
migrate when the keyspace is missing or behind.

Partitions are bounded by design: a conversation's timeline is split into
buckets of `message_bucket` seqs, a user's inbox into buckets of
`inbox_bucket` entries, a device's send log into buckets of `CID_BUCKET` cids.
Bucket sizes are written once into `meta` when the keyspace is created and
read from there ever after (changing them needs a data migration).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from chatplane.storage import cql
from chatplane.storage.base import StorageError

CID_BUCKET = 100_000
DDL_TIMEOUT_S = 120.0  # a schema change waits for every node to agree


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    # (table, column, type): CQL has no portable ADD IF NOT EXISTS, so migrate
    # adds a column only when system_schema does not list it yet.
    add_columns: tuple[tuple[str, str, str], ...] = ()


# Never edit a released migration: add the next one. {ks} is the keyspace.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "users, conversations, timelines, send log, inboxes", (
        "CREATE TABLE IF NOT EXISTS {ks}.meta (key text PRIMARY KEY, value text)",
        """CREATE TABLE IF NOT EXISTS {ks}.users (
            user_id text PRIMARY KEY, display_name text, created_at_ms bigint)""",
        """CREATE TABLE IF NOT EXISTS {ks}.conversations (
            conversation_id text PRIMARY KEY, kind text, members list<text>,
            created_at_ms bigint, extra map<text, text>)""",
        # A hint only (written USING TIMESTAMP head, so it never moves back);
        # the timeline itself is the truth (see docs/storage.md).
        """CREATE TABLE IF NOT EXISTS {ks}.conversation_heads (
            conversation_id text PRIMARY KEY, head_seq bigint)""",
        """CREATE TABLE IF NOT EXISTS {ks}.messages (
            conversation_id text, bucket bigint, seq bigint,
            message_id text, sender text, sender_device text, cid bigint,
            text text, sent_at_ms bigint, payload blob, content_type text,
            recipients list<text>, appended_at_ms bigint, fanned_out boolean,
            PRIMARY KEY ((conversation_id, bucket), seq)
        ) WITH CLUSTERING ORDER BY (seq ASC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.sends (
            conversation_id text, sender text, sender_device text, cid_bucket bigint,
            cid bigint, seq bigint,
            PRIMARY KEY ((conversation_id, sender, sender_device, cid_bucket), cid))""",
        """CREATE TABLE IF NOT EXISTS {ks}.inbox (
            user_id text, bucket bigint, inbox_seq bigint,
            conversation_id text, seq bigint, added_at_ms bigint,
            PRIMARY KEY ((user_id, bucket), inbox_seq)
        ) WITH CLUSTERING ORDER BY (inbox_seq ASC)""",
        """CREATE TABLE IF NOT EXISTS {ks}.inbox_heads (
            user_id text PRIMARY KEY, head bigint)""",
    )),
    Migration(2, "social layer: members, per-user conversations, reads, relations, invitations", (
        # Membership rows are written USING TIMESTAMP <event seq>: a change
        # re-applied after a crash, or applied late, never undoes a later one.
        """CREATE TABLE IF NOT EXISTS {ks}.members (
            conversation_id text, user_id text, role text, joined_seq bigint,
            PRIMARY KEY (conversation_id, user_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.user_conversations (
            user_id text, conversation_id text, kind text, joined_seq bigint, left_seq bigint,
            PRIMARY KEY (user_id, conversation_id))""",
        # read_seq is written USING TIMESTAMP <read_seq>, so it never moves back.
        """CREATE TABLE IF NOT EXISTS {ks}.reads (
            conversation_id text, user_id text, read_seq bigint,
            PRIMARY KEY (conversation_id, user_id))""",
        """CREATE TABLE IF NOT EXISTS {ks}.relations (
            user_id text, other text, friend boolean, request_sent boolean,
            request_received boolean, note text, blocked boolean, updated_at_ms bigint,
            PRIMARY KEY (user_id, other))""",
        """CREATE TABLE IF NOT EXISTS {ks}.invitations (
            conversation_id text, user_id text, inviter text, at_ms bigint,
            PRIMARY KEY (conversation_id, user_id))""",
    ), add_columns=(
        ("conversations", "name", "text"),
        ("conversation_heads", "last_activity_ms", "bigint"),
        ("conversation_heads", "member_count", "int"),
        ("messages", "membership", "text"),
    )),
    Migration(3, "sequencing leases: an epoch per conversation, a fence per timeline partition", (
        # Raised by conditional writes only (docs/storage.md, "Fencing").
        """CREATE TABLE IF NOT EXISTS {ks}.conversation_leases (
            conversation_id text PRIMARY KEY, epoch bigint, owner text)""",
    ), add_columns=(
        ("messages", "fence", "bigint static"),
    )),
    Migration(4, "token revocations", (
        # One small partition ('all'); before_ms is written USING TIMESTAMP
        # <before_ms * 1000>, so a later revocation never loses to an earlier one.
        """CREATE TABLE IF NOT EXISTS {ks}.revocations (
            scope text, user_id text, device_id text, before_ms bigint,
            PRIMARY KEY (scope, user_id, device_id))""",
    )),
    Migration(5, "a user's pending group invitations, listed by user", (
        """CREATE TABLE IF NOT EXISTS {ks}.user_invitations (
            user_id text, conversation_id text, inviter text, at_ms bigint,
            PRIMARY KEY (user_id, conversation_id))""",
    )),
    Migration(6, "seq blocks: one row per sequence (conversation or inbox), compaction per table", (
        # epoch: the conversation's lease (acquire); gen: raised each time a
        # process starts writing the sequence; ts_base: that gen's write
        # timestamp; reserved: the highest number any holder may write.
        # Changed by conditional writes only (docs/storage.md, "Seq blocks").
        """CREATE TABLE IF NOT EXISTS {ks}.sequencers (
            key text PRIMARY KEY, epoch bigint, gen bigint, ts_base bigint, reserved bigint,
            owner text) WITH compaction = {{'class': 'LeveledCompactionStrategy'}}""",
        # Append-only, read newest first, written at timestamps near the wall
        # clock (docs/storage.md, "Compaction"): time windows of one day.
        "ALTER TABLE {ks}.messages WITH compaction = {{'class': 'TimeWindowCompactionStrategy',"
        " 'compaction_window_unit': 'DAYS', 'compaction_window_size': '1'}}",
        "ALTER TABLE {ks}.inbox WITH compaction = {{'class': 'TimeWindowCompactionStrategy',"
        " 'compaction_window_unit': 'DAYS', 'compaction_window_size': '1'}}",
        # Small rows rewritten in place and read on every append or sync.
        "ALTER TABLE {ks}.conversation_heads WITH compaction = "
        "{{'class': 'LeveledCompactionStrategy'}}",
        "ALTER TABLE {ks}.inbox_heads WITH compaction = {{'class': 'LeveledCompactionStrategy'}}",
    )),
    Migration(7, "home regions: who sequences a conversation or a user's inbox", (
        # Changed by conditional writes only (Storage.offer_home); kind is
        # 'conversation' or 'user' (docs/architecture.md, "Regions").
        """CREATE TABLE IF NOT EXISTS {ks}.homes (
            kind text, key text, region text, epoch bigint, confirmed boolean,
            PRIMARY KEY ((kind, key)))""",
    )),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def replication_clause(replication: dict[str, str]) -> str:
    strategy = replication.get("class", "")
    if strategy not in ("SimpleStrategy", "NetworkTopologyStrategy"):
        raise StorageError(f"replication class must be SimpleStrategy or "
                           f"NetworkTopologyStrategy, not {strategy!r}")
    items = []
    for key, value in replication.items():
        if key != "class" and not str(value).isdigit():
            raise StorageError(f"replication factor for {key!r} must be a number, not {value!r}")
        if key != "class" and not cql.KEYSPACE_PATTERN.match(key.replace("-", "_")):
            raise StorageError(f"bad datacenter name {key!r}")
        items.append(f"'{key}': '{value}'")
    if len(items) < 2:
        raise StorageError("replication names no factor")
    return "{" + ", ".join(items) + "}"


def same_replication(current: dict[str, str], wanted: dict[str, str]) -> bool:
    def norm(spec: dict[str, str]) -> dict[str, str]:
        out = {k: str(v) for k, v in spec.items()}
        out["class"] = out.get("class", "").rsplit(".", 1)[-1]
        return out
    return norm(current) == norm(wanted)


async def migrate(settings: cql.CqlSettings) -> list[int]:
    """Create or update the keyspace and schema; return the versions applied
    now (empty when already current). Raises StorageError with one line."""
    keyspace = cql.check_keyspace_name(settings.keyspace)
    wanted = dict(settings.replication)
    clause = replication_clause(wanted)
    db = await cql.connect(settings)
    try:
        rows = await db.run("SELECT replication FROM system_schema.keyspaces "
                            "WHERE keyspace_name = %s", (keyspace,))
        if not rows:
            await db.run(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} "
                         f"WITH replication = {clause} AND durable_writes = true",
                         timeout_s=DDL_TIMEOUT_S)
        elif not same_replication(dict(rows[0]["replication"]), wanted):
            await db.run(f"ALTER KEYSPACE {keyspace} WITH replication = {clause}",
                         timeout_s=DDL_TIMEOUT_S)
        await db.run(f"""CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (
            version int PRIMARY KEY, name text, applied_at_ms bigint)""", timeout_s=DDL_TIMEOUT_S)
        done = {row["version"] for row in
                await db.run(f"SELECT version FROM {keyspace}.schema_migrations")}
        applied: list[int] = []
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            for statement in migration.statements:
                await db.run(statement.format(ks=keyspace), timeout_s=DDL_TIMEOUT_S)
            for table, column, kind in migration.add_columns:
                if not await db.run(
                        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = %s"
                        " AND table_name = %s AND column_name = %s", (keyspace, table, column)):
                    await db.run(f"ALTER TABLE {keyspace}.{table} ADD {column} {kind}",
                                 timeout_s=DDL_TIMEOUT_S)
            if migration.version == 1:
                await _write_buckets(db, keyspace, settings)
            await db.run(
                f"INSERT INTO {keyspace}.schema_migrations (version, name, applied_at_ms) "
                "VALUES (%s, %s, %s)",
                (migration.version, migration.name, int(time.time() * 1000)))
            applied.append(migration.version)
        return applied
    finally:
        await db.close()


async def _write_buckets(db: cql.CqlSession, keyspace: str, settings: cql.CqlSettings) -> None:
    for key, value in (("message_bucket", settings.message_bucket),
                       ("inbox_bucket", settings.inbox_bucket),
                       ("cid_bucket", CID_BUCKET)):
        if value < 1:
            raise StorageError(f"{key} must be at least 1, not {value}")
        await db.run(f"INSERT INTO {keyspace}.meta (key, value) VALUES (%s, %s) IF NOT EXISTS",
                     (key, str(value)))


async def store_id(db: cql.CqlSession, keyspace: str) -> str:
    """The keyspace's store id (see `Storage.store_id`): chosen once, by the
    first opener of a keyspace that has none (conditional insert, so two
    openers agree), then only read."""
    rows = await db.run(f"SELECT value FROM {keyspace}.meta WHERE key = 'store_id'")
    if rows:
        return str(rows[0]["value"])
    mine = uuid.uuid4().hex
    claim = await db.run(f"INSERT INTO {keyspace}.meta (key, value) VALUES ('store_id', %s) "
                         "IF NOT EXISTS", (mine,))
    # not applied: another opener was first, and the reply carries its value
    return mine if claim[0]["[applied]"] else str(claim[0]["value"])


async def check(db: cql.CqlSession, keyspace: str) -> dict[str, int]:
    """At open: the keyspace exists and is at SCHEMA_VERSION; return the bucket
    sizes from meta. StorageError (one line, saying what to run) otherwise."""
    rows = await db.run("SELECT keyspace_name FROM system_schema.keyspaces "
                        "WHERE keyspace_name = %s", (keyspace,))
    if not rows:
        raise StorageError(f"keyspace {keyspace!r} does not exist: "
                           "run `chatplane storage migrate` first")
    tables = await db.run("SELECT table_name FROM system_schema.tables "
                          "WHERE keyspace_name = %s", (keyspace,))
    if "schema_migrations" not in {row["table_name"] for row in tables}:
        raise StorageError(f"keyspace {keyspace!r} has no chatplane schema: "
                           "run `chatplane storage migrate`")
    versions = [row["version"] for row in
                await db.run(f"SELECT version FROM {keyspace}.schema_migrations")]
    current = max(versions, default=0)
    if current < SCHEMA_VERSION:
        raise StorageError(f"keyspace {keyspace!r} is at schema {current}, this build needs "
                           f"{SCHEMA_VERSION}: run `chatplane storage migrate`")
    if current > SCHEMA_VERSION:
        raise StorageError(f"keyspace {keyspace!r} is at schema {current}, newer than this "
                           f"build knows ({SCHEMA_VERSION}): upgrade chatplane")
    meta = {row["key"]: row["value"] for row in await db.run(f"SELECT key, value FROM {keyspace}.meta")}
    try:
        return {key: int(meta[key]) for key in ("message_bucket", "inbox_bucket", "cid_bucket")}
    except (KeyError, ValueError) as exc:
        raise StorageError(f"keyspace {keyspace!r} meta is incomplete ({exc}): "
                           "run `chatplane storage migrate`") from exc
