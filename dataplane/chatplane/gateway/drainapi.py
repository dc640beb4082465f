"""`POST /admin/drain` and `GET /admin/drain`, shared by `chatplane up` and the
gateway tier: who may start a drain, and the body it takes."""

from __future__ import annotations

import hmac

from aiohttp import web

from chatplane.protocol import jsonbounds
from chatplane.protocol.bounds import BoundsError
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
