"""The `chatplane` command: `up`, `token`, `chat`, `bench`, `drain`.

Bad configuration ends with one line on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from chatplane import interpreter
from chatplane import settings as settings_mod
from chatplane.settings import SettingsError
from chatplane.storage.base import StorageError


def _up_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    storage: dict[str, Any] = {}
    links: dict[str, Any] = {}
    for name, section, key in (
        ("host", server, "host"), ("port", server, "http_port"), ("tcp_port", server, "tcp_port"),
        ("data_dir", storage, "data_dir"), ("storage", storage, "backend"),
        ("cql_hosts", storage, "cql_hosts"), ("keyspace", storage, "keyspace"),
        ("redis_url", storage, "redis_url"), ("sync", storage, "sqlite_synchronous"),
        ("region", server, "region"), ("peers", links, "peers"), ("grpc_port", links, "grpc_port"),
        ("dev_login", server, "dev_login"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            section[key] = value
    return {"server": server, "storage": storage, "links": links}


async def _run_up(settings: settings_mod.Settings) -> int:
    from chatplane.node import Node

    node = Node(settings)
    try:
        await node.start()
    except (StorageError, OSError) as exc:
        print(f"chatplane: cannot start: {exc}", file=sys.stderr)
        await node.storage.close()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tcp = f" tcp={node.tcp_address}" if node.tcp_address else ""
    tcp += f" grpc={node.grpc_address}" if node.grpc_address else ""
    print(f"chatplane ready at {node.base_url} (ws {node.ws_url}{tcp}; "
          f"storage {settings.storage.backend} in {settings.storage.data_dir})", flush=True)
    await stop.wait()
    print("chatplane stopping", flush=True)
    await node.stop()
    print("chatplane stopped", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(_up_overrides(args))
    except SettingsError as exc:
        print(f"chatplane: bad configuration: {exc}", file=sys.stderr)
        return 2
    interpreter.prepare()
    if settings.server.dev_login:
        print("chatplane: development login is on: the web app signs in any user id",
              file=sys.stderr)
    return asyncio.run(_run_up(settings))


def cmd_token(args: argparse.Namespace) -> int:
    from chatplane.auth import TokenSigner

    try:
        settings = settings_mod.load({"storage": {"data_dir": args.data_dir}}
                                     if args.data_dir else None)
        secret = settings.server.token_secret
        signer = TokenSigner(secret) if secret else TokenSigner.from_data_dir(
            settings.storage.data_dir)
        tokens = [signer.mint(user, args.device, args.ttl) for user in args.users]
    except (SettingsError, ValueError, OSError) as exc:
        print(f"chatplane: {exc}", file=sys.stderr)
        return 2
    for token in tokens:
        print(token)
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    """Start a gateway's paced drain; with --wait, return once it is empty."""
    import time

    body: dict[str, float] = {}
    if args.rate is not None:
        body["rate"] = args.rate
    if args.deadline is not None:
        body["deadline_s"] = args.deadline
    request = urllib.request.Request(
        args.url.rstrip("/") + "/admin/drain", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {args.admin_secret}"} if args.admin_secret else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = json.load(response)
        print(json.dumps(status))
        while args.wait and status.get("connections", 0):
            time.sleep(0.5)
            with urllib.request.urlopen(args.url.rstrip("/") + "/admin/drain", timeout=10) as r:
                status = json.load(r)
        if args.wait:
            print(json.dumps(status))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"chatplane: drain failed: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_storage_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the CQL keyspace and schema (a Kubernetes Job runs it)."""
    overrides: dict[str, Any] = {"backend": "scylla"}
    for name in ("cql_hosts", "keyspace", "cql_replication"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        settings = settings_mod.load({"storage": overrides})
        if not settings.storage.cql_hosts:
            raise SettingsError("storage migrate needs --cql-hosts or CHATPLANE_CQL_HOSTS")
        from chatplane.storage import migrations, scylla

        applied = asyncio.run(migrations.migrate(scylla.cql_settings(settings)))
    except (SettingsError, StorageError, ImportError) as exc:
        print(f"chatplane: storage migrate failed: {exc}", file=sys.stderr)
        return 2
    print(f"keyspace {settings.storage.keyspace}: "
          + (f"applied versions {applied}" if applied else "already current"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatplane", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every tier in one process")
    up.add_argument("--data-dir", help="where embedded storage and keys live")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="HTTP/WebSocket port (default 8080; 0 = any)")
    up.add_argument("--tcp-port", type=int, help="raw TCP port (default: none)")
    up.add_argument("--storage", choices=("sqlite", "scylla"))
    up.add_argument("--cql-hosts")
    up.add_argument("--keyspace")
    up.add_argument("--redis-url")
    up.add_argument("--sync", choices=("FULL", "NORMAL"), help="SQLite durability (default FULL)")
    up.add_argument("--region", help="this region's name (CHATPLANE_REGION, default local)")
    up.add_argument("--peers", help='peer regions, JSON [{"name", "endpoint", "datacenter"}] '
                                    "(CHATPLANE_PEERS); with peers, up serves Region.Hello")
    up.add_argument("--grpc-port", type=int,
                    help="cross-region gRPC port, used with --peers (CHATPLANE_GRPC_PORT, 9090)")
    up.add_argument("--dev-login", action="store_const", const=1,
                    help="development only: the web app at / signs in any user id without a "
                         "token (CHATPLANE_DEV_LOGIN; loopback hosts only)")
    up.set_defaults(func=cmd_up)

    token = sub.add_parser("token", help="print a signed token per user")
    token.add_argument("users", nargs="+")
    token.add_argument("--device", default="default")
    token.add_argument("--data-dir")
    token.add_argument("--ttl", type=int, default=86400, help="seconds (default 1 day)")
    token.set_defaults(func=cmd_token)

    drain = sub.add_parser("drain", help="drain a gateway (paced reconnects)")
    drain.add_argument("--url", default="http://127.0.0.1:8080")
    drain.add_argument("--rate", type=float)
    drain.add_argument("--deadline", type=float)
    drain.add_argument("--admin-secret")
    drain.add_argument("--wait", action="store_true")
    drain.set_defaults(func=cmd_drain)

    storage = sub.add_parser("storage", help="storage administration")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    migrate = storage_sub.add_parser("migrate", help="create or upgrade the CQL keyspace and schema")
    migrate.add_argument("--cql-hosts", help="host[:port],... (CHATPLANE_CQL_HOSTS)")
    migrate.add_argument("--keyspace", help="CHATPLANE_KEYSPACE (default chatplane)")
    migrate.add_argument("--cql-replication",
                         help='"3", "dc1=3,dc2=3" or a JSON map (CHATPLANE_CQL_REPLICATION)')
    migrate.set_defaults(func=cmd_storage_migrate)

    for module in ("chatplane.client.chat", "chatplane.bench", "chatplane.tiers"):
        try:
            registrar = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if hasattr(registrar, "register"):
            registrar.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
