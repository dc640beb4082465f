"""A WebSocket whose login the server refuses is given back whole: the SDK aborts it (a
login left open could still succeed later and kick the next connection) and releases
aiohttp's response too, which otherwise logs "Unclosed connection" when collected (seen
by the hundred on a gateway rollout: every refused login at a draining gateway)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from chatplane.client import Client
from tests.support.server import ServerProcess


async def test_a_refused_login_leaves_no_unclosed_connection(server: ServerProcess) -> None:
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context["message"])))
    try:
        for _ in range(3):
            client = Client(server.url, "not-a-token", backoff_max_s=0.1)
            with pytest.raises(Exception) as refused:
                await client.connect()
            assert "token" in str(refused.value).lower() or "auth" in str(
                refused.value).lower(), refused.value
            await client.close()
            del client
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not [m for m in reported if "Unclosed" in m], reported
