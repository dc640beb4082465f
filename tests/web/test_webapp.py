"""The gateway serves the web app at `/` with a strict Content-Security-Policy,
the development login exists only when `chatplane up --dev-login` asks for it,
and settings refuse it on a non-loopback host (no browser needed here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chatplane import settings
from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.gateway.webapp import CONTENT_SECURITY_POLICY
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

BUILT = (Path(__file__).resolve().parents[2] / "dataplane/chatplane/web/static/app.js").exists()


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[ServerProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    proc = ServerProcess(data_dir, tcp=False, extra_args=["--dev-login"])
    proc.start()
    yield proc
    proc.stop()


def test_policy_allows_only_this_origin_and_websockets() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no inline scripts, no eval
    assert directives["connect-src"] == "'self' ws: wss:"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.skipif(not BUILT, reason="the web app is not built (scripts/setup/40-web.sh)")
async def test_app_is_served_with_the_policy_and_no_dev_login(server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/") as page:
            assert page.status == 200
            assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            html = await page.text()
        assert '<script src="/static/app.js" defer></script>' in html
        assert "<script>" not in html and " style=" not in html  # nothing inline
        async with http.get(server.url + "/static/app.js") as script:
            assert script.status == 200
            assert script.headers["Content-Type"].startswith("text/javascript")
            assert script.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        for missing in ("/static/nope.js", "/static/app.py", "/static/..%2Fweb%2F__init__.py"):
            async with http.get(server.url + missing) as reply:
                assert reply.status == 404, missing
        async with http.get(server.url + "/dev/login") as dev:
            assert dev.status == 404  # off unless --dev-login
        async with http.post(server.url + "/dev/login", json={"user": "mallory"}) as dev:
            assert dev.status in (404, 405)


async def test_dev_login_mints_a_working_token(dev_server: ServerProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(dev_server.url + "/dev/login") as probe:
            assert probe.status == 200
        async with http.post(dev_server.url + "/dev/login", json={"user": "dana"}) as reply:
            token = (await reply.json())["token"]
        async with http.post(dev_server.url + "/dev/login", json={"user": "no spaces"}) as bad:
            assert bad.status == 400
            assert "invalid user id" in (await bad.json())["error"]
    assert TokenSigner.from_data_dir(dev_server.data_dir).verify(token).user_id == "dana"
    client = Client(dev_server.url, token)
    try:
        await client.connect()
        assert client.user_id == "dana"
        # a request first: closing a client within ms of its login stalls its
        # close for 30 s (a Python SDK race, reported, not fixed here)
        await client.direct("erin")
    finally:
        await client.close()
    assert token not in "\n".join(dev_server.output)


def test_dev_login_refused_off_loopback() -> None:
    with pytest.raises(settings.SettingsError, match="loopback hosts only"):
        settings.load({"server": {"dev_login": 1, "host": "0.0.0.0"}}, environ={})
    assert settings.load({"server": {"dev_login": 1}}, environ={}).server.dev_login == 1
    with pytest.raises(settings.SettingsError, match="dev_login must be 0 or 1"):
        settings.load(environ={"CHATPLANE_DEV_LOGIN": "2"})
