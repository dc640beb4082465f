"""The admin HTTP API and service endpoints of a real `chatplane up`."""

from __future__ import annotations

import aiohttp
import pytest
from chatplane.client import Client

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


async def test_users_tokens_and_refusals(server: ServerProcess) -> None:
    secret = (server.data_dir / "admin.secret").read_text().strip()
    auth = {"Authorization": f"Bearer {secret}"}
    async with aiohttp.ClientSession(server.url) as http:
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
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/metrics") as r:
            text = await r.text()
    assert "chatplane_connections 1" in text and "chatplane_logins_total 1" in text
    await client.close()


async def test_dispatch(server: ServerProcess) -> None:
    async with aiohttp.ClientSession(server.url) as http:
        async with http.get("/v1/dispatch", params={"uid": "ann"}) as r:
            endpoints = (await r.json())["endpoints"]
        async with http.get("/v1/dispatch", params={"uid": "bad uid"}) as r:
            assert r.status == 400
    assert endpoints[0]["ws"].endswith("/ws")
    assert endpoints[0]["tcp"] == f"127.0.0.1:{server.tcp_port}"
