"""`chatplane witness`: the failover witness as a process (docs/operations.md, "Failover
witness"). It serves the `Witness` gRPC service (proto/chatplane/v1/witness.proto) and
keeps what must survive a restart in SQLite (synchronous=FULL: a restarted witness never
grants a takeover twice nor forgets a region that acks alone); the rules are
regions/witnessing.py.

Callers are regions: with gRPC TLS (CHATPLANE_GRPC_TLS_*) a caller's certificate must
name `region.<its region>` (CN or SAN) and chain to the peer CA, like the Region link;
without TLS the call names its region in the metadata (identified, not authenticated,
as on the Region link). A request for another region than the caller's is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from chatplane import settings as settings_mod
from chatplane.regions.witnessing import Grants, LeaseAnswer, Record, Wish
from chatplane.rpc import callers
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.settings import SettingsError
from chatplane.v1 import witness_pb2 as wpb
from chatplane.v1 import witness_pb2_grpc as wgrpc

log = logging.getLogger("chatplane.witness")

MAX_TTL_MS = 60_000  # a lease longer than this is cut to it
DB_FILE = "witness.db"


class WitnessStore:
    """The durable half of `Grants`: one row per region, and the grant counter."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS witness_regions (region TEXT PRIMARY KEY,"
                        " ttl_s REAL NOT NULL, alone INTEGER NOT NULL, taken_by TEXT NOT NULL,"
                        " taken_grant INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS witness_meta (k TEXT PRIMARY KEY,"
                        " v INTEGER NOT NULL)")

    def load(self, now: float) -> Grants:
        records = {row[0]: Record(row[1], bool(row[2]), row[3], row[4]) for row in
                   self.db.execute("SELECT region, ttl_s, alone, taken_by, taken_grant"
                                   " FROM witness_regions")}
        row = self.db.execute("SELECT v FROM witness_meta WHERE k = 'grants'").fetchone()
        return Grants.restored(records, row[0] if row else 0, now)

    def save(self, grants: Grants, regions: tuple[str, ...]) -> None:
        """The records of `regions` and the counter, in one transaction (fsync'd)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for name in regions:
                r = grants.records[name]
                self.db.execute("INSERT OR REPLACE INTO witness_regions VALUES (?, ?, ?, ?, ?)",
                                (name, r.ttl_s, int(r.alone), r.taken_by, r.taken_grant))
            self.db.execute("INSERT OR REPLACE INTO witness_meta VALUES ('grants', ?)",
                            (grants.grants,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


class WitnessServicer(wgrpc.WitnessServicer):
    """Each call runs the rule and stores what changed before it answers: an answer
    never promises what a crash could forget."""

    def __init__(self, grants: Grants, store: WitnessStore, security: LinkSecurity) -> None:
        self.grants = grants
        self.store = store
        self.security = security
        self.check = security.cert_check()

    async def _caller_is(self, region: str, context: grpc.aio.ServicerContext) -> None:
        wanted = f"{callers.REGION_PREFIX}{region}"
        if self.security.tls:
            identities = callers.identities_from_auth(context.auth_context(), self.check)
        else:
            identities = frozenset(v for k, v in context.invocation_metadata() or ()
                                   if k == callers.ROLE_KEY and isinstance(v, str))
        if not region or wanted not in identities:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"the caller is not region {region!r}")

    async def Lease(self, request: wpb.LeaseRequest,
                    context: grpc.aio.ServicerContext) -> wpb.LeaseReply:
        await self._caller_is(request.region, context)
        ttl_s = min(max(request.ttl_ms, 1), MAX_TTL_MS) / 1000
        answer: LeaseAnswer = self.grants.renew(request.region, ttl_s, Wish(request.alone),
                                                time.monotonic())
        if answer.changed:
            self.store.save(self.grants, answer.changed)
            log.warning("witness: %s renewed (alone %s); records of %s changed",
                        request.region, answer.alone, ", ".join(answer.changed))
        return wpb.LeaseReply(held=answer.held, alone=answer.alone, taken_by=answer.taken_by,
                              taken_grant=answer.taken_grant, reason=answer.reason)

    async def Takeover(self, request: wpb.TakeoverRequest,
                       context: grpc.aio.ServicerContext) -> wpb.TakeoverReply:
        await self._caller_is(request.region, context)
        answer = self.grants.take_over(request.region, request.lost, time.monotonic())
        if answer.changed:
            self.store.save(self.grants, answer.changed)
            log.warning("witness: granted %s the takeover of %s (grant %d)", request.region,
                        request.lost, answer.grant)
        elif not answer.granted:
            log.info("witness: refused %s the takeover of %s: %s", request.region,
                     request.lost, answer.reason)
        return wpb.TakeoverReply(granted=answer.granted, grant=answer.grant,
                                 reason=answer.reason)


async def serve(settings: settings_mod.Settings) -> int:
    store = WitnessStore(Path(settings.storage.data_dir) / DB_FILE)
    grants = store.load(time.monotonic())
    security = LinkSecurity.from_settings(settings, "witness")
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    wgrpc.add_WitnessServicer_to_server(WitnessServicer(grants, store, security), server)
    address = f"{settings.server.host}:{settings.links.grpc_port}"
    creds = security.server_credentials()
    port = (server.add_secure_port(address, creds) if creds is not None
            else server.add_insecure_port(address))
    if port == 0:
        print(f"chatplane: cannot start: cannot listen for gRPC on {address}", file=sys.stderr)
        store.close()
        return 2
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"chatplane witness ready at {settings.server.host}:{port} (state in"
          f" {store_path(settings)}; {len(grants.records)} regions known,"
          f" {grants.grants} grants)", flush=True)
    await stop.wait()
    await server.stop(1.0)
    store.close()
    print("chatplane witness stopped", flush=True)
    return 0


def store_path(settings: settings_mod.Settings) -> Path:
    return Path(settings.storage.data_dir) / DB_FILE


def cmd_witness(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {"server": {}, "storage": {}, "links": {}}
    if args.host is not None:
        overrides["server"]["host"] = args.host
    if args.grpc_port is not None:
        overrides["links"]["grpc_port"] = args.grpc_port
    if args.data_dir is not None:
        overrides["storage"]["data_dir"] = args.data_dir
    try:
        settings = settings_mod.load(overrides)
        if not 0 < settings.links.grpc_port < 65536:
            raise SettingsError(f"grpc port {settings.links.grpc_port} out of range")
    except SettingsError as exc:
        print(f"chatplane: bad configuration: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("witness", help="run the failover witness two regions share"
                                       " (docs/operations.md, Failover witness)")
    p.add_argument("--host", help="listen address (CHATPLANE_HOST, default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, help="CHATPLANE_GRPC_PORT (default 9090)")
    p.add_argument("--data-dir", help="where its SQLite state lives (CHATPLANE_DATA_DIR)")
    p.set_defaults(func=cmd_witness)
