"""Serves the web app at `/` with a strict Content-Security-Policy.

The files are the build output in chatplane/web/static (package data, built
from clients/js; no CDN at run time). The page talks to the gateway only over
`/ws` and `/v1/dispatch`, so the policy allows nothing but this origin and
WebSockets: no inline scripts or styles, no frames, no plugins. The token
travels in the Login frame, never in a URL, so access logs never hold one.

`chatplane up --dev-login` adds `/dev/login`: a token for any user id, for
trying the app on a laptop (settings refuse it on a non-loopback host).
"""

from __future__ import annotations

import json
from importlib import resources

from aiohttp import web

from chatplane.auth import TokenSigner

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
DEV_TOKEN_TTL_S = 86400
NOT_BUILT = "the web app is not built: run scripts/setup/40-web.sh (npm ci && npm run build in clients/js)"


def _static(name: str) -> bytes | None:
    """A built file's bytes, or None when it does not exist."""
    node = resources.files("chatplane.web").joinpath("static", name)
    return node.read_bytes() if node.is_file() else None


def _file_response(name: str) -> web.Response:
    suffix = name[name.rfind("."):]
    body = _static(name) if suffix in CONTENT_TYPES and "/" not in name else None
    if body is None:
        status, text = (503, NOT_BUILT) if name == "index.html" else (404, "not found")
        return web.Response(status=status, text=text, headers=SECURITY_HEADERS)
    headers = {**SECURITY_HEADERS, "Content-Type": CONTENT_TYPES[suffix],
               "Cache-Control": "no-cache"}
    return web.Response(body=body, headers=headers)


async def index(request: web.Request) -> web.Response:
    return _file_response("index.html")


async def static_file(request: web.Request) -> web.Response:
    return _file_response(request.match_info["name"])


def dev_login_routes(signer: TokenSigner) -> list[web.RouteDef]:
    async def enabled(request: web.Request) -> web.Response:
        return web.json_response({"enabled": True})

    async def mint(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            token = signer.mint(str(body.get("user", "")), str(body.get("device") or "web"),
                                DEV_TOKEN_TTL_S)
        except (ValueError, AttributeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})

    return [web.get("/dev/login", enabled), web.post("/dev/login", mint)]


def routes(dev_signer: TokenSigner | None = None) -> list[web.RouteDef]:
    """The app's routes; with a signer, the development login too."""
    served = [web.get("/", index), web.get("/static/{name}", static_file)]
    return served + (dev_login_routes(dev_signer) if dev_signer is not None else [])
