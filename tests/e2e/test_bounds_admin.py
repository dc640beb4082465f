"""Admin API and drain bodies against a real `chatplane up`: wrong JSON types,
bools for ints, NaN, infinities, huge numbers, absurd values and deep nesting
are answered 400 naming the field, and the server is unharmed (nothing
drained, still ready)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

TOKEN_BODIES = [
    ('{"user_id": "ann", "ttl_s": true}', "field ttl_s"),
    ('{"user_id": "ann", "ttl_s": "3600"}', "field ttl_s"),
    ('{"user_id": "ann", "ttl_s": 3600.5}', "field ttl_s"),
    ('{"user_id": "ann", "ttl_s": NaN}', "field body"),
    ('{"user_id": "ann", "ttl_s": Infinity}', "field body"),
    ('{"user_id": "ann", "ttl_s": 1e400}', "field ttl_s"),
    ('{"user_id": "ann", "ttl_s": 100000000000000000000000000000}', "field ttl_s"),
    ('{"user_id": "ann", "ttl_s": -1}', "field ttl_s"),
    ('{"user_id": 7}', "field user_id"),
    ('{"user_id": "ann", "device_id": ["x"]}', "field device_id"),
    ("[" * 50_000, "field body"),
    ("[1, 2]", "field body"),
]

DRAIN_BODIES = [
    ('{"rate": "inf"}', "field rate"),
    ('{"rate": Infinity}', "field body"),
    ('{"deadline_s": "nan"}', "field deadline_s"),
    ('{"deadline_s": NaN}', "field body"),
    ('{"rate": true}', "field rate"),
    ('{"rate": 0}', "field rate"),
    ('{"rate": 1e308}', "field rate"),
    ('{"deadline_s": 1e9}', "field deadline_s"),
    ('{"deadline_s": null}', "field deadline_s"),
    ('"drain"', "field body"),
]


async def test_admin_and_drain_bodies_out_of_bounds_are_400_with_the_field(
        server: ServerProcess) -> None:
    secret = (server.data_dir / "admin.secret").read_text().strip()
    auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(server.admin_url) as http:
        for body, field in TOKEN_BODIES:
            async with http.post("/v1/admin/tokens", data=body, headers=auth) as r:
                error = (await r.json())["error"]
                assert r.status == 400 and error.startswith(field), (body[:40], error)
        group = {"owner": "ann", "name": "g", "members": [f"u{i}" for i in range(1001)]}
        async with http.post("/v1/admin/groups", json=group, headers=auth) as r:
            assert r.status == 400 and (await r.json())["error"].startswith("field members")
        async with http.post("/v1/admin/groups/" + "g" * 200 + "/members", json={},
                             headers=auth) as r:
            assert r.status == 400 and (await r.json())["error"].startswith("field group_id")
        for body, field in DRAIN_BODIES:
            async with http.post("/admin/drain", data=body, headers=auth) as r:
                error = (await r.json())["error"]
                assert r.status == 400 and error.startswith(field), (body, error)
        async with http.get("/admin/drain") as r:
            assert (await r.json())["draining"] is False
        async with http.post("/v1/admin/tokens", json={"user_id": "ann", "ttl_s": 60},
                             headers=auth) as r:
            assert r.status == 200 and (await r.json())["expires_in"] == 60
        async with http.get("/readyz") as r:
            assert r.status == 200
