"""`chatplane gateway|state|im|ipconf`: each tier as its own process, and
`chatplane cluster up`.

Every tier is configured by the `CHATPLANE_*` environment (the names the
operator sets) and the common flags; it prints one line with `ready` and its
addresses once it serves, logs JSON lines with the trace id on stderr (unless
`--log-format text`), and
stops cleanly on SIGINT. SIGTERM stops the other tiers at once and makes a
gateway drain first (readiness false, paced Reconnects, exit when empty or
at the drain deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any, Protocol

from chatplane import interpreter, tracing
from chatplane import settings as settings_mod
from chatplane.settings import SettingsError
from chatplane.storage.base import StorageError
from chatplane.storage.files import private_files
from chatplane.supervision import Supervisor


class TierApp(Protocol):
    kind: str
    supervisor: Supervisor

    async def start(self) -> None: ...

    def ready_line(self) -> str: ...

    async def stop(self) -> None: ...


def _make(kind: str, settings: settings_mod.Settings) -> TierApp:
    if kind == "gateway":
        from chatplane.gateway.app import GatewayApp
        return GatewayApp(settings)
    if kind == "state":
        from chatplane.state.app import StateApp
        return StateApp(settings)
    if kind == "im":
        from chatplane.im.app import ImApp
        return ImApp(settings)
    from chatplane.ipconf.app import IpconfApp
    return IpconfApp(settings)


async def _serve(kind: str, settings: settings_mod.Settings) -> int:
    try:
        app = _make(kind, settings)
        await app.start()
    except (StorageError, OSError, ValueError, settings_mod.SettingsError) as exc:
        print(f"chatplane {kind}: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    finished: asyncio.Event | None = getattr(app, "finished", None)
    if finished is not None:  # a gateway: SIGTERM drains, then exits
        loop.add_signal_handler(signal.SIGTERM, app.terminate)  # type: ignore[attr-defined]
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(app.ready_line(), flush=True)
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(app.supervisor.fatal())]
    if finished is not None:
        waits.append(asyncio.create_task(finished.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    print(f"chatplane {kind} stopping", flush=True)
    await app.stop()
    if app.supervisor.fatal_line:  # a task it could not keep running
        print(f"chatplane {kind}: {app.supervisor.fatal_line}", file=sys.stderr, flush=True)
        return 1
    print(f"chatplane {kind} stopped", flush=True)
    return 0


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"server": {}, "storage": {}, "links": {}, "admin": {},
                                      "tls": {}}
    for name, section, key in (
        ("host", "server", "host"), ("port", "server", "http_port"),
        ("tcp_port", "server", "tcp_port"), ("id", "server", "server_id"),
        ("data_dir", "storage", "data_dir"), ("storage", "storage", "backend"),
        ("redis_url", "storage", "redis_url"), ("grpc_port", "links", "grpc_port"),
        ("state_addrs", "links", "state_addrs"), ("im_addrs", "links", "im_addrs"),
        ("admin_port", "admin", "port"),
        ("tls_cert", "tls", "cert"), ("tls_key", "tls", "key"),
    ):
        value = getattr(args, name, None)
        if value is not None:
            out[section][key] = value
    return out


def cmd_tier(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(_overrides(args))
        # an im of a region on a shared CQL keyspace: sync needs EACH_QUORUM, as up's
        problem = settings_mod.up_problem(settings) if args.tier == "im" else None
        if problem is not None:
            raise SettingsError(problem)
    except SettingsError as exc:
        print(f"chatplane: bad configuration: {exc}", file=sys.stderr)
        return 2
    tracing.setup(args.tier, settings.links.otlp_endpoint, ratio=settings.links.trace_sample_ratio)
    interpreter.prepare()
    private_files(settings.storage.data_dir)
    return asyncio.run(_serve(args.tier, settings))


def register(sub: argparse._SubParsersAction) -> None:
    for kind, text in (("gateway", "client connections (WS, TCP), drain"),
                       ("state", "device routes, presence, downlink routing"),
                       ("im", "messaging logic and storage, admin API"),
                       ("ipconf", "dispatch: ranked gateways from Redis")):
        p = sub.add_parser(kind, help=f"run the {kind} tier alone: {text}")
        p.add_argument("--id", help="instance id (CHATPLANE_SERVER_ID)")
        p.add_argument("--host", help="listen address (CHATPLANE_HOST)")
        p.add_argument("--port", type=int, help="HTTP port (CHATPLANE_HTTP_PORT; 0 = any)")
        p.add_argument("--admin-port", type=int,
                       help="admin port: /metrics, admin API, drain (CHATPLANE_ADMIN_PORT; "
                            "default --port + 1)")
        p.add_argument("--redis-url", help="CHATPLANE_REDIS_URL")
        p.add_argument("--data-dir", help="keys (and SQLite storage for im)")
        if kind != "ipconf":
            p.add_argument("--grpc-port", type=int, help="CHATPLANE_GRPC_PORT (default 9090)")
        if kind == "gateway":
            p.add_argument("--tcp-port", type=int, help="raw TCP port (CHATPLANE_TCP_PORT)")
        if kind in ("gateway", "ipconf"):
            p.add_argument("--tls-cert", help="PEM cert for HTTPS (and the gateway's WSS and "
                                              "TCP+TLS) (CHATPLANE_TLS_CERT)")
            p.add_argument("--tls-key", help="its PEM key (CHATPLANE_TLS_KEY)")
        if kind in ("gateway", "im"):
            p.add_argument("--state-addrs", help="CHATPLANE_STATE_ADDRS (else from Redis)")
        if kind == "gateway":
            p.add_argument("--im-addrs", help="CHATPLANE_IM_ADDRS (else from Redis)")
        if kind == "im":
            p.add_argument("--storage", choices=("sqlite", "scylla"))
        p.set_defaults(func=cmd_tier, tier=kind)
    from chatplane import cluster
    cluster.register(sub)
