"""`chatplane cluster up` as a user runs it: one ready line with the dispatch
URL, a chat through it, and every process gone after Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.cluster.conftest import cluster_up_process

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(p) for p in out.split()]


async def test_cluster_up_serves_and_stops_everything(tmp_path: Path) -> None:
    proc = cluster_up_process(tmp_path, 1, 1)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith("chatplane cluster ready dispatch=http://127.0.0.1:"), line
        dispatch = line.split("dispatch=")[1].split()[0]
        children = _children(proc.pid)
        assert len(children) == 5  # redis, state, im, gateway, ipconf
        signer = TokenSigner.from_data_dir(tmp_path / "data")
        alice = Client(dispatch, signer.mint("alice", "p"))
        bob = Client(dispatch, signer.mint("bob", "p"))
        await alice.connect()
        await bob.connect()
        conv = await alice.direct("bob")
        ack = await alice.send_text(conv, "hello")
        got = await asyncio.wait_for(anext(bob.messages()), 10)
        assert (got.seq, got.text) == (ack.seq, "hello")
        # the store id reaches the login through the gateway's im link
        assert alice.position()["store_id"] and alice.position()["store_id"] == bob.position()["store_id"]
        await alice.close()
        await bob.close()
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(dispatch + path, timeout=5) as response:  # noqa: ASYNC210
                assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:  # /metrics: the admin port only
            urllib.request.urlopen(dispatch + "/metrics", timeout=5)  # noqa: ASYNC210
        assert refused.value.code == 404
        # the gateway serves the web app (docs/web-client.md) with its policy
        with urllib.request.urlopen(dispatch + "/v1/dispatch?uid=alice", timeout=5) as response:  # noqa: ASYNC210
            ws = json.load(response)["endpoints"][0]["ws"]
        gateway = ws.replace("ws://", "http://").removesuffix("/ws")
        with urllib.request.urlopen(gateway + "/", timeout=5) as response:  # noqa: ASYNC210
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
