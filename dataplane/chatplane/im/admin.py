"""The admin HTTP API: what an app's backend calls (bearer admin secret).

    POST /v1/admin/users            {"user_id", "display_name"?}     -> 201 user
    GET  /v1/admin/users/{user_id}                                   -> 200 user | 404
    POST /v1/admin/tokens           {"user_id", "device_id"?, "ttl_s"?} -> 200 {"token", "expires_in"}
    POST /v1/admin/groups           {"name", "owner", "members"?}    -> 201 {"conversation_id", "seq"}
    GET  /v1/admin/groups/{id}/members                              -> 200 {"members": [...]}
    POST /v1/admin/groups/{id}/members {"add"?: [...], "remove"?: [...]} -> 200 {"seq"}
    DELETE /v1/admin/groups/{id}                                    -> 200 {"seq"} (dissolves)

Errors are JSON `{"error": text}` with 400 (bad input), 401 (no or wrong
secret), 404, 503 (storage unavailable).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chatplane.auth import TokenSigner
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.storage.base import Storage, StorageUnavailable, valid_id

if TYPE_CHECKING:
    from chatplane.im.service import ImService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_TTL_S = 30 * 86400


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


class AdminApi:
    def __init__(self, storage: Storage, signer: TokenSigner, admin_secret: str,
                 im: ImService | None = None) -> None:
        self.storage = storage
        self.signer = signer
        self.admin_secret = admin_secret
        self.im = im

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/v1/admin/users", self._guard(self.create_user)),
            web.get("/v1/admin/users/{user_id}", self._guard(self.get_user)),
            web.post("/v1/admin/tokens", self._guard(self.mint_token)),
        ]
        if self.im is not None:
            routes += [
                web.post("/v1/admin/groups", self._guard(self.create_group)),
                web.get("/v1/admin/groups/{group_id}/members", self._guard(self.group_members)),
                web.post("/v1/admin/groups/{group_id}/members", self._guard(self.change_members)),
                web.delete("/v1/admin/groups/{group_id}", self._guard(self.dissolve_group)),
            ]
        return routes

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
            except ProtocolError as exc:
                status = {ErrorCode.NOT_FOUND: 404, ErrorCode.FORBIDDEN: 404,
                          ErrorCode.UNAVAILABLE: 503}.get(exc.code, 400)
                return _error(status, exc.message)

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

    # -- groups ----------------------------------------------------------------

    @staticmethod
    def _users(body: dict[str, Any], key: str) -> list[str]:
        users = body.get(key, [])
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"{key}: a list of user ids")
        return users

    async def create_group(self, request: web.Request) -> web.StreamResponse:
        assert self.im is not None
        body = await self._json(request)
        owner, name = body.get("owner"), body.get("name", "")
        if not isinstance(owner, str) or not valid_id(owner):
            return _error(400, "owner: 1-64 of A-Z a-z 0-9 _ . @ -")
        if not isinstance(name, str):
            return _error(400, "name: a string")
        result, _ = await self.im.groups.create(owner, "admin-api", name,
                                                self._users(body, "members"), by_admin=True)
        return web.json_response({"conversation_id": result.message.conversation_id,
                                  "seq": result.message.seq}, status=201)

    async def group_members(self, request: web.Request) -> web.StreamResponse:
        assert self.im is not None
        members = await self.storage.members(request.match_info["group_id"])
        if not members:
            return _error(404, "no such group")
        return web.json_response({"members": [
            {"user_id": m.user_id, "role": m.role, "joined_seq": m.joined_seq} for m in members]})

    async def change_members(self, request: web.Request) -> web.StreamResponse:
        assert self.im is not None
        body = await self._json(request)
        result = await self.im.groups.admin_change(
            request.match_info["group_id"], self._users(body, "add"), self._users(body, "remove"))
        return web.json_response({"seq": result.message.seq if result else 0})

    async def dissolve_group(self, request: web.Request) -> web.StreamResponse:
        assert self.im is not None
        result = await self.im.groups.admin_change(request.match_info["group_id"], [], [],
                                                   dissolve=True)
        return web.json_response({"seq": result.message.seq if result else 0})
