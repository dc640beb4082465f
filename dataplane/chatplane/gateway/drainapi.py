"""`POST /admin/drain` and `GET /admin/drain`, shared by `chatplane up` and the
gateway tier: who may start a drain, and the body it takes."""

from __future__ import annotations

import hmac

from aiohttp import web

from chatplane.settings import Drain

LOOPBACK = ("127.0.0.1", "::1")


def authorized(request: web.Request, admin_secret: str) -> bool:
    given = request.headers.get("Authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(
        given[7:].encode(), admin_secret.encode())


async def drain_request(request: web.Request, admin_secret: str,
                        defaults: Drain) -> tuple[float, float] | web.Response:
    """(rate, deadline_s) to drain with, or the error response to send. A
    drain may come from loopback (the pod's preStop hook) or with the admin
    secret."""
    if not authorized(request, admin_secret) and request.remote not in LOOPBACK:
        return web.json_response({"error": "admin secret required"}, status=401)
    try:
        body = await request.json() if request.can_read_body else {}
        rate = float(body.get("rate", defaults.rate))
        deadline = float(body.get("deadline_s", defaults.deadline_s))
    except (ValueError, TypeError, AttributeError):
        return web.json_response({"error": "body: {\"rate\": >0, \"deadline_s\": >0}"},
                                 status=400)
    if rate <= 0 or deadline <= 0:
        return web.json_response({"error": "rate and deadline_s must be > 0"}, status=400)
    return rate, deadline
