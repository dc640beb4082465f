"""The admin HTTP API: what an app's backend calls (bearer admin secret).

    POST /v1/admin/users            {"user_id", "display_name"?}     -> 201 user
    GET  /v1/admin/users/{user_id}                                   -> 200 user | 404
    POST /v1/admin/tokens           {"user_id", "device_id"?, "ttl_s"?} -> 200 {"token", "expires_in"}
    POST /v1/admin/groups           {"name", "owner", "members"?}    -> 201 {"conversation_id", "seq"}
    GET  /v1/admin/groups/{id}/members                              -> 200 {"members": [...]}
    POST /v1/admin/groups/{id}/members {"add"?: [...], "remove"?: [...]} -> 200 {"seq"}
    DELETE /v1/admin/groups/{id}                                    -> 200 {"seq"} (dissolves)
    POST /v1/admin/revocations      {"user_id"?, "device_id"?, "before"?} -> 200 revocation
    GET  /v1/admin/revocations                                      -> 200 {"revocations": [...]}
    POST /v1/admin/conversations/{id}/home {"region"}  -> 200 {"conversation_id", "home",
                                    "epoch", "moved", ...} (several regions; on that region)
    POST /v1/admin/users/{user_id}/home {"region"}     -> 200 {"user_id", "home", "epoch",
                                    "moved", ...} (the user's inbox; likewise)

Served on the admin port only (rpc/adminport.py). Errors are JSON
`{"error": text}` with 400 (bad input: the text names the field, "field
ttl_s: an integer in 1 .. 2592000, not true"; the bounds are
protocol/jsonbounds.py's), 401 (no or wrong secret), 404, 409 (a home move while
another move of the same home is under way), 503 (storage unavailable). Every call
that changes something, and every refused call, is written to the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from chatplane.auth import TokenSigner
from chatplane.protocol import jsonbounds
from chatplane.protocol.bounds import (
    MAX_CONVERSATION_ID_BYTES,
    MAX_GROUP_NAME_CHARS,
    MAX_REGION_BYTES,
)
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.regions.moving import MoveConflict
from chatplane.revocations import parse_before
from chatplane.rpc.adminport import ADMIN_CREDENTIAL, AuditLog, credential
from chatplane.storage.base import ANY, Revocation, Storage, StorageUnavailable, valid_id

if TYPE_CHECKING:
    from chatplane.im.groups import Groups

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Revoked = Callable[[Revocation], Awaitable[None]]
# Moves a conversation's home to a region (regions/moving.py, through the node): its answer.
MoveHome = Callable[[str, str], Awaitable[dict[str, Any]]]
AUDIT_TARGET = "audit_target"  # request key: what a handler acted on, for the audit line


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


class AdminApi:
    def __init__(self, storage: Storage, signer: TokenSigner, admin_secret: str,
                 groups: Groups | None = None, *, audit: AuditLog | None = None,
                 on_revoked: Revoked | None = None, move_home: MoveHome | None = None,
                 move_user_home: MoveHome | None = None) -> None:
        self.storage = storage
        self.signer = signer
        self.admin_secret = admin_secret
        self.groups = groups  # None: no group routes (the admin API without an im)
        self.audit = audit or AuditLog()
        self.on_revoked = on_revoked  # tell the revocation's readers now (gateways, Redis)
        self.move_home = move_home  # None: one region, nothing to move
        self.move_user_home = move_user_home  # the same for users' homes (their inboxes)

    def routes(self) -> list[web.RouteDef]:
        routes = [
            web.post("/v1/admin/users", self._guard(self.create_user, "user.create")),
            web.get("/v1/admin/users/{user_id}", self._guard(self.get_user)),
            web.post("/v1/admin/tokens", self._guard(self.mint_token, "token.mint")),
            web.post("/v1/admin/revocations", self._guard(self.revoke, "token.revoke")),
            web.get("/v1/admin/revocations", self._guard(self.list_revocations)),
        ]
        if self.groups is not None:
            routes += [
                web.post("/v1/admin/groups", self._guard(self.create_group, "group.create")),
                web.get("/v1/admin/groups/{group_id}/members", self._guard(self.group_members)),
                web.post("/v1/admin/groups/{group_id}/members",
                         self._guard(self.change_members, "group.members")),
                web.delete("/v1/admin/groups/{group_id}",
                           self._guard(self.dissolve_group, "group.dissolve")),
            ]
        if self.move_home is not None:
            routes.append(web.post("/v1/admin/conversations/{conversation_id}/home",
                                   self._guard(self.move, "home.move")))
        if self.move_user_home is not None:
            routes.append(web.post("/v1/admin/users/{user_id}/home",
                                   self._guard(self.move_user, "home.move_user")))
        return routes

    def _guard(self, handler: Handler, action: str = "") -> Handler:
        """The admin secret, error mapping, and (for an `action`, and for any
        refused call) the audit line."""
        async def guarded(request: web.Request) -> web.StreamResponse:
            kind = credential(request, self.admin_secret)
            if kind != ADMIN_CREDENTIAL:
                self.audit.record(request, action or f"{request.method} {request.path}",
                                  "denied", status=401, credential_kind=kind)
                return _error(401, "missing or wrong admin secret (Authorization: Bearer ...)")
            try:
                response = await handler(request)
            except StorageUnavailable as exc:
                response = _error(503, f"storage unavailable: {exc}")
            except MoveConflict as exc:  # another move of the home is under way
                response = _error(409, exc.message)
            except ProtocolError as exc:
                status = {ErrorCode.NOT_FOUND: 404, ErrorCode.FORBIDDEN: 404,
                          ErrorCode.UNAVAILABLE: 503}.get(exc.code, 400)
                response = _error(status, exc.message)
            except web.HTTPException as exc:
                response = exc
            if action:
                outcome = "ok" if response.status < 400 else (
                    "rejected" if response.status < 500 else "error")
                self.audit.record(request, action, outcome, status=response.status,
                                  target=request.get(AUDIT_TARGET))
            if isinstance(response, web.HTTPException):
                raise response
            return response

        return guarded

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            text = await request.text()
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "field body: not UTF-8") from None
        return jsonbounds.parse_object(text)

    @staticmethod
    def _group_id(request: web.Request) -> str:
        group_id = request.match_info["group_id"]
        if not 0 < len(group_id.encode()) <= MAX_CONVERSATION_ID_BYTES:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT,
                                f"field group_id: 1 .. {MAX_CONVERSATION_ID_BYTES} bytes")
        return group_id

    async def move(self, request: web.Request) -> web.StreamResponse:
        assert self.move_home is not None
        conversation_id = request.match_info["conversation_id"]
        if not 0 < len(conversation_id.encode()) <= MAX_CONVERSATION_ID_BYTES:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT,
                                f"field conversation_id: 1 .. {MAX_CONVERSATION_ID_BYTES} bytes")
        region = jsonbounds.string(await self._json(request), "region", MAX_REGION_BYTES)
        request[AUDIT_TARGET] = {"conversation_id": conversation_id, "region": region}
        return web.json_response(await self.move_home(conversation_id, region))

    async def move_user(self, request: web.Request) -> web.StreamResponse:
        assert self.move_user_home is not None
        user_id = request.match_info["user_id"]
        if not valid_id(user_id):
            return _error(400, "field user_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        region = jsonbounds.string(await self._json(request), "region", MAX_REGION_BYTES)
        request[AUDIT_TARGET] = {"user_id": user_id, "region": region}
        return web.json_response(await self.move_user_home(user_id, region))

    async def create_user(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        user_id = jsonbounds.user_id(body, "user_id")
        display_name = jsonbounds.string(body, "display_name", jsonbounds.MAX_DISPLAY_NAME_CHARS,
                                         user_id)
        request[AUDIT_TARGET] = {"user_id": user_id}
        await self.storage.put_user(user_id, display_name, int(time.time() * 1000))
        return web.json_response(await self.storage.get_user(user_id), status=201)

    async def get_user(self, request: web.Request) -> web.StreamResponse:
        user_id = request.match_info["user_id"]
        if not valid_id(user_id):
            return _error(400, "field user_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        user = await self.storage.get_user(user_id)
        return web.json_response(user) if user else _error(404, "no such user")

    async def mint_token(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        user_id = jsonbounds.user_id(body, "user_id")
        device_id = jsonbounds.user_id(body, "device_id", "default")
        ttl_s = jsonbounds.integer(body, "ttl_s", 1, jsonbounds.MAX_TTL_S, 86400)
        request[AUDIT_TARGET] = {"user_id": user_id, "device_id": device_id, "ttl_s": ttl_s,
                                 "kid": self.signer.signing_kid}
        token = self.signer.mint(user_id, device_id, ttl_s)
        return web.json_response({"token": token, "expires_in": ttl_s})

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        """One device of a user, every device of a user, or (no user) every
        token issued before `before`; `before` defaults to now."""
        body = await self._json(request)
        user_id, device_id = body.get("user_id", ANY), body.get("device_id", ANY)
        if user_id != ANY and (not isinstance(user_id, str) or not valid_id(user_id)):
            return _error(400, "user_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        if device_id != ANY and (not isinstance(device_id, str) or not valid_id(device_id)):
            return _error(400, "device_id: 1-64 of A-Z a-z 0-9 _ . @ -")
        if user_id == ANY and device_id != ANY:
            return _error(400, "device_id needs user_id")
        if user_id == ANY and "before" not in body:
            return _error(400, "revoking every user's tokens needs an explicit before")
        now_ms = int(time.time() * 1000)
        try:
            before_ms = parse_before(body["before"]) if "before" in body else now_ms
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))
        # a cutoff in the future would also refuse tokens minted from now on
        if before_ms > now_ms:
            return _error(400, "before: must not be in the future")
        revocation = Revocation(user_id, device_id, before_ms)
        request[AUDIT_TARGET] = {"user_id": user_id, "device_id": device_id,
                                 "before_ms": before_ms}
        await self.storage.put_revocation(revocation)
        if self.on_revoked is not None:
            await self.on_revoked(revocation)
        return web.json_response({"user_id": user_id, "device_id": device_id,
                                  "before_ms": before_ms})

    async def list_revocations(self, request: web.Request) -> web.StreamResponse:
        rows = await self.storage.revocations()
        return web.json_response({"revocations": [
            {"user_id": r.user_id, "device_id": r.device_id, "before_ms": r.before_ms}
            for r in sorted(rows, key=lambda r: (r.user_id, r.device_id))]})

    # -- groups ----------------------------------------------------------------

    async def create_group(self, request: web.Request) -> web.StreamResponse:
        assert self.groups is not None
        body = await self._json(request)
        owner = jsonbounds.user_id(body, "owner")
        name = jsonbounds.string(body, "name", MAX_GROUP_NAME_CHARS, "")
        members = jsonbounds.user_ids(body, "members")
        request[AUDIT_TARGET] = {"owner": owner, "name": name, "members": len(members)}
        result, _ = await self.groups.create(owner, "admin-api", name, members, by_admin=True)
        return web.json_response({"conversation_id": result.message.conversation_id,
                                  "seq": result.message.seq}, status=201)

    async def group_members(self, request: web.Request) -> web.StreamResponse:
        assert self.groups is not None
        members = await self.storage.members(self._group_id(request))
        if not members:
            return _error(404, "no such group")
        return web.json_response({"members": [
            {"user_id": m.user_id, "role": m.role, "joined_seq": m.joined_seq} for m in members]})

    async def change_members(self, request: web.Request) -> web.StreamResponse:
        assert self.groups is not None
        body = await self._json(request)
        add, remove = jsonbounds.user_ids(body, "add"), jsonbounds.user_ids(body, "remove")
        request[AUDIT_TARGET] = {"group_id": self._group_id(request),
                                 "add": add[:20], "remove": remove[:20]}
        seq = await self.groups.admin_change(self._group_id(request), add, remove)
        return web.json_response({"seq": seq})

    async def dissolve_group(self, request: web.Request) -> web.StreamResponse:
        assert self.groups is not None
        request[AUDIT_TARGET] = {"group_id": self._group_id(request)}
        seq = await self.groups.admin_change(self._group_id(request), [], [], dissolve=True)
        return web.json_response({"seq": seq})
