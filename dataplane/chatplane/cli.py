"""The `chatplane` command: `up`, `token` (mint; `token revoke`), `chat`,
`bench`, `drain`, `storage` (`migrate`, `backup`, `restore`), `witness`.

Bad configuration ends with one line on stderr and exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from typing import Any

from chatplane import drainhook, interpreter, supervision, tracing
from chatplane import settings as settings_mod
from chatplane.drainhook import admin_call, http_error
from chatplane.settings import SettingsError
from chatplane.storage.base import StorageError
from chatplane.storage.files import private_files


def _up_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    storage: dict[str, Any] = {}
    links: dict[str, Any] = {}
    admin: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    for name, section, key in (
        ("host", server, "host"), ("port", server, "http_port"), ("tcp_port", server, "tcp_port"),
        ("data_dir", storage, "data_dir"), ("storage", storage, "backend"),
        ("cql_hosts", storage, "cql_hosts"), ("keyspace", storage, "keyspace"),
        ("redis_url", storage, "redis_url"), ("sync", storage, "sqlite_synchronous"),
        ("region", server, "region"), ("peers", links, "peers"), ("grpc_port", links, "grpc_port"),
        ("durability", links, "region_durability"),
        ("admin_port", admin, "port"),
        ("tls_cert", tls, "cert"), ("tls_key", tls, "key"),
        ("dev_login", server, "dev_login"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            section[key] = value
    return {"server": server, "storage": storage, "links": links, "admin": admin, "tls": tls}


async def _run_up(settings: settings_mod.Settings) -> int:
    from chatplane.node import Node

    try:
        node = Node(settings)
    except (ValueError, OSError) as exc:
        print(f"chatplane: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        await node.start()
    except (StorageError, OSError, SettingsError) as exc:
        print(f"chatplane: cannot start: {exc}", file=sys.stderr)
        await node.storage.close()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tcp = f" tcp={node.tcp_address}" if node.tcp_address else ""
    tcp += f" grpc={node.grpc_address}" if node.grpc_address else ""
    print(f"chatplane ready at {node.base_url} (ws {node.ws_url}{tcp}; admin {node.admin_url}; "
          f"storage {settings.storage.backend} in {settings.storage.data_dir})", flush=True)
    fatal = await supervision.serve_until(stop, node.supervisor)
    print("chatplane stopping", flush=True)
    await node.stop()
    if fatal:  # a task it could not keep running: exit non-zero, one line
        print(f"chatplane: {fatal}", file=sys.stderr, flush=True)
        return 1
    print("chatplane stopped", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(_up_overrides(args))
        problem = settings_mod.up_problem(settings)
        if problem is not None:
            raise SettingsError(problem)
    except SettingsError as exc:
        print(f"chatplane: bad configuration: {exc}", file=sys.stderr)
        return 2
    tracing.setup("up", settings.links.otlp_endpoint, ratio=settings.links.trace_sample_ratio)
    interpreter.prepare()
    private_files(settings.storage.data_dir)
    if settings.server.dev_login:
        print("chatplane: development login is on: the web app signs in any user id",
              file=sys.stderr)
    return asyncio.run(_run_up(settings))


def admin_secret(args: argparse.Namespace) -> str:
    """--admin-secret, else CHATPLANE_ADMIN_SECRET, else the data dir's secret
    file (--data-dir, else CHATPLANE_DATA_DIR, else ./chatplane-data); "" if none."""
    from pathlib import Path

    from chatplane.auth import ADMIN_SECRET_FILE

    if getattr(args, "admin_secret", None):
        return str(args.admin_secret)
    if os.environ.get("CHATPLANE_ADMIN_SECRET"):
        return os.environ["CHATPLANE_ADMIN_SECRET"]
    data_dir = (getattr(args, "data_dir", None) or os.environ.get("CHATPLANE_DATA_DIR")
                or settings_mod.Storage().data_dir)
    try:
        return (Path(data_dir) / ADMIN_SECRET_FILE).read_text().strip()
    except OSError:
        return ""


def cmd_token_revoke(argv: list[str]) -> int:
    """`chatplane token revoke --user U [--device D] [--before T] | --before T`."""
    p = argparse.ArgumentParser(
        prog="chatplane token revoke",
        description="Revoke tokens through the admin API: one device, one user, or every "
                    "token issued before a time. Live sessions close within session_check_s.")
    p.add_argument("--url", default="http://127.0.0.1:8081", help="the admin port's URL")
    p.add_argument("--user", help="the user whose tokens to revoke")
    p.add_argument("--device", help="only this device of --user")
    p.add_argument("--before", help="tokens issued before this (epoch seconds or ISO 8601 "
                                    "with a zone); default now; alone: every user's")
    p.add_argument("--admin-secret", help="else CHATPLANE_ADMIN_SECRET, else --data-dir's file")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    if args.device and not args.user:
        p.error("--device needs --user")
    if not args.user and not args.before:
        p.error("give --user U [--device D], or --before T to revoke every user's tokens")
    body: dict[str, Any] = {}
    if args.user:
        body["user_id"] = args.user
    if args.device:
        body["device_id"] = args.device
    if args.before:
        body["before"] = args.before
    try:
        result = admin_call(args.url.rstrip("/") + "/v1/admin/revocations", admin_secret(args),
                            "POST", body)
    except urllib.error.HTTPError as exc:
        print(f"chatplane: revoke refused: {http_error(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"chatplane: revoke failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from chatplane.auth import TokenSigner

    try:
        settings = settings_mod.load({"storage": {"data_dir": args.data_dir}}
                                     if args.data_dir else None)
        signer = TokenSigner.configured(settings)
        tokens = [signer.mint(user, args.device, args.ttl) for user in args.users]
    except (SettingsError, ValueError, OSError) as exc:
        print(f"chatplane: {exc}", file=sys.stderr)
        return 2
    for token in tokens:
        print(token)
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    """Start a gateway's paced drain; with --wait, return once it is empty."""
    return drainhook.drain(args.url, admin_secret(args), args.rate, args.deadline, args.wait)


def cmd_storage_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the CQL keyspace and schema (a Kubernetes Job runs it)."""
    try:
        settings = settings_mod.load_cql(args, "storage migrate")
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
    parser.add_argument("--log-level", default=os.environ.get("CHATPLANE_LOG_LEVEL", "WARNING"),
                        help="DEBUG, INFO, WARNING (default), ERROR (CHATPLANE_LOG_LEVEL)")
    parser.add_argument("--log-format", default=os.environ.get("CHATPLANE_LOG_FORMAT", ""),
                        help="text, or json: one JSON object per line (CHATPLANE_LOG_FORMAT; "
                             "default json for the tier processes, text otherwise)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every tier in one process")
    up.add_argument("--data-dir", help="where embedded storage and keys live")
    up.add_argument("--host", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="HTTP/WebSocket port (default 8080; 0 = any)")
    up.add_argument("--tcp-port", type=int, help="raw TCP port (default: none)")
    up.add_argument("--admin-port", type=int,
                    help="admin API, /metrics, drain (CHATPLANE_ADMIN_PORT; default --port + 1)")
    up.add_argument("--storage", choices=("sqlite", "scylla"))
    up.add_argument("--cql-hosts")
    up.add_argument("--keyspace")
    up.add_argument("--redis-url")
    up.add_argument("--sync", choices=("FULL", "NORMAL"), help="SQLite durability (default FULL)")
    up.add_argument("--region", help="this region's name (CHATPLANE_REGION, default local)")
    up.add_argument("--peers", help='peer regions, JSON [{"name", "endpoint", "datacenter"}] '
                                    "(CHATPLANE_PEERS); with peers, up serves the Region link (on "
                                    "SQLite: 1:1 chats' and groups' homes, forwarding, replication)")
    up.add_argument("--grpc-port", type=int,
                    help="cross-region gRPC port, used with --peers (CHATPLANE_GRPC_PORT, 9090)")
    up.add_argument("--durability", choices=("sync", "async"),
                    help="with --peers: sync (default) acks a 1:1 chat's send once another "
                         "region applied it, async on the home's own disk "
                         "(CHATPLANE_REGION_DURABILITY; bound CHATPLANE_REGION_SYNC_TIMEOUT_S, 3)")
    up.add_argument("--tls-cert", help="PEM certificate: HTTPS/WSS and TCP+TLS (CHATPLANE_TLS_CERT); "
                                       "reloaded when the file changes")
    up.add_argument("--tls-key", help="its PEM private key (CHATPLANE_TLS_KEY)")
    up.add_argument("--dev-login", action="store_const", const=1,
                    help="development only: the web app at / signs in any user id without a "
                         "token (CHATPLANE_DEV_LOGIN; loopback hosts only)")
    up.set_defaults(func=cmd_up)

    token = sub.add_parser(
        "token", help="print a signed token per user; `token revoke --help`: revoke tokens")
    token.add_argument("users", nargs="+")
    token.add_argument("--device", default="default")
    token.add_argument("--data-dir")
    token.add_argument("--ttl", type=int, default=86400, help="seconds (default 1 day)")
    token.set_defaults(func=cmd_token)

    drain = sub.add_parser("drain", help="drain a gateway (paced reconnects)")
    drain.add_argument("--url", default="http://127.0.0.1:8081", help="the gateway's admin port")
    drain.add_argument("--rate", type=float)
    drain.add_argument("--deadline", type=float)
    drain.add_argument("--admin-secret", help="else CHATPLANE_ADMIN_SECRET, else --data-dir's file")
    drain.add_argument("--data-dir", help="where the admin secret file is")
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
    from chatplane.storage import backup as storage_backup
    storage_backup.register(storage_sub)
    from chatplane.storage import archiving
    archiving.register(storage_sub)
    from chatplane.storage import check as storage_check
    storage_check.register(storage_sub)

    for module in ("chatplane.client.chat", "chatplane.bench", "chatplane.tiers",
                   "chatplane.planning.capacity", "chatplane.regions.witness"):
        try:
            registrar = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        if hasattr(registrar, "register"):
            registrar.register(sub)
    return parser


def _token_revoke_args(argv: list[str]) -> list[str] | None:
    """The options of `chatplane [--log-level L] token revoke ...`, else None
    (`token` itself takes user ids, so `revoke` is routed here first)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1 if "=" in argv[i] else 2
    return argv[i + 2:] if argv[i:i + 2] == ["token", "revoke"] else None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM ends the process until a command installs its own handler (a gateway's drain,
    # a tier's clean stop, once it serves). In a container the process is PID 1, which
    # ignores any signal it has no handler for: a gateway container the kubelet had just
    # restarted when its pod was deleted sat out the whole grace period while starting.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    revoke = _token_revoke_args(sys.argv[1:] if argv is None else argv)
    if revoke is not None:
        return cmd_token_revoke(revoke)
    args = build_parser().parse_args(argv)
    tier = getattr(args, "tier", "")  # a tier process runs in a pod: a log pipeline reads it
    fmt = args.log_format or ("json" if tier else "text")
    if fmt not in tracing.LOG_FORMATS:
        print(f"chatplane: --log-format (CHATPLANE_LOG_FORMAT) must be text or json, not {fmt!r}",
              file=sys.stderr)
        return 2
    tracing.configure_logging(tier or args.command, args.log_level, fmt)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
