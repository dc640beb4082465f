"""The admin side of every process: its own listener, its credential, its
audit log (docs/admin-api.md).

The admin API, `/metrics`, `/admin/drain` and debug endpoints are served only
on the admin port (`CHATPLANE_ADMIN_PORT`; default the HTTP port + 1), which
the public Service never exposes; `/healthz` and `/readyz` are served there
too, so a probe may use either port. Every admin call that changes something
needs `Authorization: Bearer <admin secret>`, from any address: being on
loopback proves nothing (a same-pod proxy is "anyone").

Each admin action (mint, revoke, drain, user and group changes) and each
refused call is one JSON line in the audit log (`CHATPLANE_AUDIT_LOG`: a path,
or "-"/empty for stderr):
  {"ts": "2026-12-06T00:00:00.123Z", "who": {"addr": "10.0.0.7", "credential":
   "admin-secret"}, "action": "token.revoke", "target": {...},
   "outcome": "ok", "status": 200}
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp import web
from prometheus_client import CollectorRegistry

from chatplane.rpc import serving
from chatplane.settings import Settings, admin_port

ADMIN_CREDENTIAL = "admin-secret"


def credential(request: web.Request, admin_secret: str) -> str:
    """What the caller presented: "admin-secret" (the right one), "wrong" or "none"."""
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer "):
        return "none"
    ok = hmac.compare_digest(given[7:].encode(), admin_secret.encode())
    return ADMIN_CREDENTIAL if ok else "wrong"


class AuditLog:
    """Appends one JSON line per admin action; never raises into the caller
    (an audit write that fails is reported on stderr once per failure)."""

    def __init__(self, target: str = "") -> None:
        self.target = target
        self._lock = threading.Lock()
        self._file: TextIO | None = None
        if target not in ("", "-"):
            # opened at start: a path that cannot be written is bad configuration;
            # 0600 when created: it names users and addresses
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    @classmethod
    def configured(cls, settings: Settings) -> AuditLog:
        try:
            return cls(settings.admin.audit_log)
        except OSError as exc:
            raise ValueError(f"CHATPLANE_AUDIT_LOG {settings.admin.audit_log}: {exc}") from exc

    def record(self, request: web.Request | None, action: str, outcome: str, *,
               status: int = 0, credential_kind: str = ADMIN_CREDENTIAL,
               target: dict[str, Any] | None = None) -> None:
        entry = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "who": {"addr": (request.remote or "") if request is not None else "local",
                    "credential": credential_kind},
            "action": action,
            "target": target or {},
            "outcome": outcome,
            "status": status,
        }
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            try:
                stream = self._file if self._file is not None else sys.stderr
                stream.write(line)
                stream.flush()
            except (OSError, ValueError) as exc:
                print(f"chatplane: audit log write failed: {exc}", file=sys.stderr)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


async def start_admin(app: web.Application, settings: Settings) -> tuple[web.AppRunner, int]:
    """Serve `app` on the admin port (server.host); returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, admin_port(settings))
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def probes_app(ready: Callable[[], bool], registry: CollectorRegistry,
               detail: Callable[[], Mapping[str, object]] | None = None) -> web.Application:
    """The admin app of a tier with no admin endpoints of its own (state, ipconf)."""
    app = web.Application()
    app.add_routes([*serving.probe_routes(ready, detail), *serving.metrics_routes(registry)])
    return app
