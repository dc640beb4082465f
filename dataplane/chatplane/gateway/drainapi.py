"""`POST /admin/drain` and `GET /admin/drain`, shared by `chatplane up` and the
gateway tier: who may start a drain, and the body it takes. Served on the
admin port only; a drain needs the admin secret from every address
(rpc/adminport.py), and each attempt is audited."""

from __future__ import annotations

from aiohttp import web

from chatplane.protocol import jsonbounds
from chatplane.protocol.bounds import BoundsError
from chatplane.rpc.adminport import ADMIN_CREDENTIAL, AuditLog, credential
from chatplane.settings import Drain


async def drain_request(request: web.Request, admin_secret: str, defaults: Drain,
                        audit: AuditLog) -> tuple[float, float] | web.Response:
    """(rate, deadline_s) to drain with, or the error response to send. A
    drain needs the admin secret, from loopback too (the pod's preStop hook
    has it in its environment)."""
    answer = await _drain_request(request, admin_secret, defaults)
    kind = credential(request, admin_secret)
    if isinstance(answer, web.Response):
        audit.record(request, "gateway.drain", "denied" if answer.status == 401 else "rejected",
                     status=answer.status, credential_kind=kind)
    else:
        audit.record(request, "gateway.drain", "ok", status=202, credential_kind=kind,
                     target={"rate": answer[0], "deadline_s": answer[1]})
    return answer


async def _drain_request(request: web.Request, admin_secret: str,
                         defaults: Drain) -> tuple[float, float] | web.Response:
    if credential(request, admin_secret) != ADMIN_CREDENTIAL:
        return web.json_response(
            {"error": "admin secret required (Authorization: Bearer <secret>)"}, status=401)
    try:  # numbers only, finite, within bounds: "inf", NaN, true and 1e308 are refused
        body = jsonbounds.parse_object(await request.text() if request.can_read_body else "")
        rate = jsonbounds.number(body, "rate", jsonbounds.MAX_DRAIN_RATE, defaults.rate)
        deadline = jsonbounds.number(body, "deadline_s", jsonbounds.MAX_DRAIN_DEADLINE_S,
                                     defaults.deadline_s)
    except UnicodeDecodeError:
        return web.json_response({"error": "field body: not UTF-8"}, status=400)
    except BoundsError as exc:
        return web.json_response({"error": exc.message}, status=400)
    return rate, deadline
