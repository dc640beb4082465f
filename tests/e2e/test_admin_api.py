"""The admin HTTP API and service endpoints of a real `chatplane up`: the
admin API, /metrics and drain on the admin port only, health on both."""

from __future__ import annotations

import aiohttp
import pytest

from chatplane.client import Client
from tests.support import prom
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


async def test_users_tokens_and_refusals(server: ServerProcess) -> None:
    secret = (server.data_dir / "admin.secret").read_text().strip()
    auth = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(server.admin_url) as http:
        async with http.post("/v1/admin/users", json={"user_id": "ann", "display_name": "Ann"},
                             headers=auth) as r:
            assert r.status == 201 and (await r.json())["display_name"] == "Ann"
        async with http.get("/v1/admin/users/ann", headers=auth) as r:
            assert r.status == 200
        async with http.get("/v1/admin/users/nobody", headers=auth) as r:
            assert r.status == 404
        async with http.post("/v1/admin/tokens", json={"user_id": "ann", "device_id": "web"},
                             headers=auth) as r:
            token = (await r.json())["token"]
        for body, field in (({"user_id": "a b"}, "user_id"), ({"user_id": "ann", "ttl_s": 0}, "ttl_s"),
                            ({"user_id": "ann", "device_id": ""}, "device_id")):
            async with http.post("/v1/admin/tokens", json=body, headers=auth) as r:
                assert r.status == 400 and field in (await r.json())["error"]
        async with http.post("/v1/admin/tokens", data=b"{not json", headers=auth) as r:
            assert r.status == 400
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.post("/v1/admin/tokens", json={"user_id": "ann"},
                                 headers=headers) as r:
                assert r.status == 401
        async with http.get("/healthz") as r:
            assert r.status == 200
        async with http.get("/readyz") as r:
            assert r.status == 200
    client = Client(server.url, token)
    await client.connect()
    assert (client.user_id, client.device_id) == ("ann", "web")
    async with aiohttp.ClientSession(server.admin_url) as http:
        async with http.get("/metrics") as r:
            text = await r.text()
    figures = prom.samples(text)
    assert figures["chatplane_connections"] == 1 and figures["chatplane_logins_total"] == 1
    # the storage's own figures are there too (logging in wrote the user's events conversation)
    assert figures["chatplane_storage_commit_seconds_count"] > 0
    await client.close()


async def test_dispatch(server: ServerProcess) -> None:
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/v1/dispatch", params={"uid": "ann"}) as r:
            endpoints = (await r.json())["endpoints"]
        async with http.get("/v1/dispatch", params={"uid": "bad uid"}) as r:
            assert r.status == 400
    assert endpoints[0]["ws"].endswith("/ws")
    assert endpoints[0]["tcp"] == f"127.0.0.1:{server.tcp_port}"


async def test_groups_from_the_admin_api(server: ServerProcess) -> None:
    from chatplane.auth import TokenSigner

    secret = (server.data_dir / "admin.secret").read_text().strip()
    auth = {"Authorization": f"Bearer {secret}"}
    signer = TokenSigner.from_data_dir(server.data_dir)
    zed = Client(server.url, signer.mint("zed"))
    await zed.connect()
    async with aiohttp.ClientSession(server.admin_url) as http:
        async with http.post("/v1/admin/groups", headers=auth,
                             json={"name": "ops", "owner": "yan", "members": ["zed"]}) as r:
            assert r.status == 201
            group = (await r.json())["conversation_id"]
        async with http.post(f"/v1/admin/groups/{group}/members", headers=auth,
                             json={"add": ["xia"], "remove": ["zed"]}) as r:
            assert r.status == 200 and (await r.json())["seq"] == 3  # an add, then a kick
        async with http.get(f"/v1/admin/groups/{group}/members", headers=auth) as r:
            members = {m["user_id"]: m["role"] for m in (await r.json())["members"]}
        assert members == {"yan": "owner", "xia": "member"}
        async with http.post(f"/v1/admin/groups/{group}/members", headers=auth,
                             json={"add": "xia"}) as r:
            assert r.status == 400
        async with http.delete(f"/v1/admin/groups/{group}", headers=auth) as r:
            assert r.status == 200
        async with http.get("/v1/admin/groups/g:nothing/members", headers=auth) as r:
            assert r.status == 404
    seen = []
    async for event in zed.events():  # zed saw the group made, xia added, then its removal
        seen.append((event.kind, event.detail.get("action"), event.detail.get("user_ids")))
        if len(seen) == 3:
            break
    assert seen == [("group", "CREATED", ["zed"]), ("group", "ADD", ["xia"]),
                    ("group", "KICK", ["zed"])]
    await zed.close()


async def test_the_public_port_serves_no_admin_surface(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {server.admin_secret}"}
    async with aiohttp.ClientSession(server.url) as http:
        for method, path in (("GET", "/metrics"), ("GET", "/admin/drain"),
                             ("POST", "/admin/drain"), ("POST", "/v1/admin/tokens"),
                             ("POST", "/v1/admin/revocations"), ("GET", "/v1/peers")):
            async with http.request(method, path, headers=auth, json={"user_id": "a"}) as r:
                assert r.status in (404, 405), (method, path, r.status)
        async with http.get("/healthz") as r:
            assert r.status == 200


async def test_drain_endpoint_of_up(server: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {server.admin_secret}"}
    async with aiohttp.ClientSession(server.admin_url) as http:
        # loopback is no credential: no secret, or a wrong one, is refused
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.post("/admin/drain", json={"rate": 100}, headers=headers) as r:
                assert r.status == 401
        async with http.get("/readyz") as r:
            assert r.status == 200
        async with http.post("/admin/drain", json={"rate": 0}, headers=auth) as r:
            assert r.status == 400
        async with http.post("/admin/drain", json={"rate": 100, "deadline_s": 5},
                             headers=auth) as r:
            assert r.status == 202
        async with http.get("/admin/drain") as r:
            assert (await r.json())["draining"] is True
        async with http.get("/readyz") as r:
            assert r.status == 503
