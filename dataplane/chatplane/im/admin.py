"""The admin HTTP API: what an app's backend calls (bearer admin secret).

    POST /v1/admin/users            {"user_id", "display_name"?}     -> 201 user
    GET  /v1/admin/users/{user_id}                                   -> 200 user | 404
    POST /v1/admin/tokens           {"user_id", "device_id"?, "ttl_s"?} -> 200 {"token", "expires_in"}

Errors are JSON `{"error": text}` with 400 (bad input), 401 (no or wrong
secret), 404, 503 (storage unavailable).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chatplane.auth import TokenSigner
from chatplane.storage.base import Storage, StorageUnavailable, valid_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_TTL_S = 30 * 86400


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


class AdminApi:
    def __init__(self, storage: Storage, signer: TokenSigner, admin_secret: str) -> None:
        self.storage = storage
        self.signer = signer
        self.admin_secret = admin_secret

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/admin/users", self._guard(self.create_user)),
            web.get("/v1/admin/users/{user_id}", self._guard(self.get_user)),
            web.post("/v1/admin/tokens", self._guard(self.mint_token)),
        ]

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(
                given[7:].encode(), self.admin_secret.encode()
            ):
                return _error(401, "missing or wrong admin secret (Authorization: Bearer ...)")
            try:
                return await handler(request)
            except StorageUnavailable as exc:
                return _error(503, f"storage unavailable: {exc}")

        return guarded

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body is not JSON"}), content_type="application/json"
            ) from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body must be a JSON object"}),
                content_type="application/json",
            )
        return body

    async def create_user(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not valid_id(user_id):
            return _error(400, "user_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        display_name = body.get("display_name", user_id)
        if not isinstance(display_name, str) or len(display_name) > 128:
            return _error(400, "display_name: a string of at most 128 characters")
        await self.storage.put_user(user_id, display_name, int(time.time() * 1000))
        return web.json_response(await self.storage.get_user(user_id), status=201)

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        user = await self.storage.get_user(request.match_info["user_id"])
        return web.json_response(user) if user else _error(404, "no such user")

    async def mint_token(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        user_id = body.get("user_id")
        device_id = body.get("device_id", "default")
        ttl_s = body.get("ttl_s", 86400)
        if not isinstance(user_id, str) or not valid_id(user_id):
            return _error(400, "user_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        if not isinstance(device_id, str) or not valid_id(device_id):
            return _error(400, "device_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        if not isinstance(ttl_s, int) or not 0 < ttl_s <= MAX_TTL_S:
            return _error(400, f"ttl_s: an integer in 1..{MAX_TTL_S}")
        token = self.signer.mint(user_id, device_id, ttl_s)
        return web.json_response({"token": token, "expires_in": ttl_s})
