"""`chatplane storage check`: does the CQL keyspace match the settings?

Prints what an operator needs before trusting a keyspace with traffic: the
schema version (and the one this build needs), the replication map per
datacenter (and the one the settings ask for), the bucket and block sizes, and
the consistency level each kind of statement runs at. Exits 0 when everything
matches, 1 on a mismatch (each printed on a line starting with "MISMATCH"), 2
when the keyspace cannot be read at all. `storage migrate` fixes the schema and
the replication map; docs/storage.md ("Consistency levels") says why each
level is what it is.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from chatplane import settings as settings_mod
from chatplane.settings import SettingsError
from chatplane.storage.base import StorageError

# statement kind -> (what it is, which setting's level it runs at)
LEVELS = (
    ("plain writes (messages, inbox entries, heads, send log)", "write_consistency"),
    ("reads (history, inbox, heads, lease checks)", "consistency"),
    ("conditional writes: seq block reservations and takes (Paxos)", "serial_consistency"),
    ("commit of a conditional write", "consistency"),
    ("reads that settle a conditional write's outcome", "serial_consistency"),
)


async def inspect(cql_settings: Any) -> tuple[list[str], list[str]]:
    """(report lines, mismatches) for the keyspace the settings name."""
    from chatplane.storage import cql, migrations

    keyspace = cql.check_keyspace_name(cql_settings.keyspace)
    lines: list[str] = []
    wrong: list[str] = []
    db = await cql.connect(cql_settings)
    try:
        rows = await db.run("SELECT replication FROM system_schema.keyspaces "
                            "WHERE keyspace_name = %s", (keyspace,))
        if not rows:
            raise StorageError(f"keyspace {keyspace!r} does not exist: "
                               "run `chatplane storage migrate`")
        versions = [row["version"] for row in
                    await db.run(f"SELECT version FROM {keyspace}.schema_migrations")]
        current = max(versions, default=0)
        lines.append(f"keyspace         {keyspace}")
        lines.append(f"schema version   {current} (this build needs {migrations.SCHEMA_VERSION})")
        if current != migrations.SCHEMA_VERSION:
            wrong.append(f"schema version {current}, this build needs "
                         f"{migrations.SCHEMA_VERSION}: run `chatplane storage migrate`")
        actual = {str(k): str(v) for k, v in dict(rows[0]["replication"]).items()}
        wanted = {str(k): str(v) for k, v in dict(cql_settings.replication).items()}
        lines.append(f"replication      {_describe(actual)}")
        lines.append(f"  settings want  {_describe(wanted)}")
        if not migrations.same_replication(actual, wanted):
            wrong.append(f"replication is {_describe(actual)}, the settings want "
                         f"{_describe(wanted)}: run `chatplane storage migrate`")
        dcs = [k for k in actual if k not in ("class", "replication_factor")]
        if cql_settings.local_dc and dcs and cql_settings.local_dc not in dcs:
            wrong.append(f"local datacenter {cql_settings.local_dc!r} holds no replica "
                         f"(the map names {', '.join(dcs)})")
        meta = {row["key"]: row["value"]
                for row in await db.run(f"SELECT key, value FROM {keyspace}.meta")}
        lines.append(f"buckets          messages {meta.get('message_bucket', '?')}, inbox "
                     f"{meta.get('inbox_bucket', '?')}, cids {meta.get('cid_bucket', '?')}")
        lines.append(f"seq block        {cql_settings.seq_block} numbers a conditional write")
        lines.append("consistency")
        for what, setting in LEVELS:
            level = getattr(cql_settings, setting) or cql_settings.consistency
            lines.append(f"  {level:<13} {what}")
    finally:
        await db.close()
    return lines, wrong


def _describe(replication: dict[str, str]) -> str:
    strategy = replication.get("class", "?").rsplit(".", 1)[-1]
    factors = ", ".join(f"{k}={v}" for k, v in sorted(replication.items()) if k != "class")
    return f"{strategy} {factors}"


def cmd_check(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load_cql(args, "storage check")
        from chatplane.storage import scylla

        lines, wrong = asyncio.run(inspect(scylla.cql_settings(settings)))
    except (SettingsError, StorageError, ImportError) as exc:
        print(f"chatplane: storage check failed: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    for problem in wrong:
        print(f"MISMATCH {problem}")
    return 1 if wrong else 0


def register(storage_sub: argparse._SubParsersAction) -> None:
    p = storage_sub.add_parser("check", help="compare the CQL keyspace with the settings")
    p.add_argument("--cql-hosts", help="host[:port],... (CHATPLANE_CQL_HOSTS)")
    p.add_argument("--keyspace", help="CHATPLANE_KEYSPACE (default chatplane)")
    p.add_argument("--cql-replication",
                   help='"3", "dc1=3,dc2=3" or a JSON map (CHATPLANE_CQL_REPLICATION)')
    p.set_defaults(func=cmd_check)
