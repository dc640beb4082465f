"""/readyz tells the truth about storage, against a real `chatplane up` process.

Before, /readyz said 200 while every write timed out (the writer thread had
died) or every request failed "malformed". Now a writer held up by a real
cause (another process holding SQLite's write lock) longer than
CHATPLANE_WEDGE_S turns /readyz 503 with "storage writer wedged: oldest job
N s" and back to 200 once it moves; a damaged file found while serving turns
it 503 with "storage corrupt"; and a Send whose cid SQLite cannot hold fails
alone while everyone's traffic goes on (the outage of issue 15)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client, RequestError
from chatplane.v1 import frames_pb2 as pb
from tests.e2e.test_damaged_store import corrupt_messages_root, fill
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


def readyz(server: ServerProcess) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(server.url + "/readyz", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def wait_readyz(server: ServerProcess, status: int, timeout_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        code, body = await asyncio.to_thread(readyz, server)
        if code == status:
            return body
        assert loop.time() < deadline, f"/readyz stayed {code}: {body}"
        await asyncio.sleep(0.1)


async def test_a_wedged_writer_turns_readyz_false_naming_it(data_dir: Path,
                                                             signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, tcp=False, env={"CHATPLANE_WEDGE_S": "1"})
    server.start()
    blocker = sqlite3.connect(data_dir / "chatplane.db", isolation_level=None)
    alice = Client(server.url, signer.mint("alice", "phone"))
    try:
        await alice.connect()
        conv = await alice.direct("bob")
        assert (await wait_readyz(server, 200, 5))["problems"] == []
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        sending = asyncio.ensure_future(alice.send_text(conv, "held up"))
        body = await wait_readyz(server, 503, 5)
        (problem,) = body["problems"]  # type: ignore[misc]
        assert problem.startswith("storage writer wedged: oldest job ")
        blocker.execute("ROLLBACK")
        assert (await asyncio.wait_for(sending, 20)).seq == 1
        assert (await wait_readyz(server, 200, 5))["problems"] == []
    finally:
        blocker.close()
        await alice.close()
        server.stop()


async def test_a_send_sqlite_cannot_hold_fails_alone_and_writes_go_on(
        data_dir: Path, signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, tcp=False)
    server.start()
    alice = Client(server.url, signer.mint("alice", "phone"))
    carol = Client(server.url, signer.mint("carol", "phone"))
    try:
        await alice.connect()
        await carol.connect()
        conv = await alice.direct("bob")
        # cid 2**64 - 1 straight on the wire (the SDK numbers its own cids);
        # whatever the edge answers, the process must not stop writing
        frame = pb.Frame(send=pb.Send(conversation_id=conv, cid=2**64 - 1, text="overflow"))
        with pytest.raises(RequestError):
            await asyncio.wait_for(alice._request(frame, attempts=1), 10)
        other = await asyncio.wait_for(carol.direct("dan"), 5)  # a write of someone else
        assert (await asyncio.wait_for(carol.send_text(other, "still here"), 5)).seq == 1
        assert (await asyncio.wait_for(alice.send_text(conv, "me too"), 5)).seq == 1
        code, body = await asyncio.to_thread(readyz, server)
        assert code == 200 and body["problems"] == []
    finally:
        await alice.close()
        await carol.close()
        server.stop()


async def test_a_store_damaged_while_serving_turns_readyz_false(data_dir: Path,
                                                                signer: TokenSigner) -> None:
    server = ServerProcess(data_dir, tcp=False)
    server.start()
    try:
        await fill(server, signer, 600)
        checkpoint = sqlite3.connect(data_dir / "chatplane.db", isolation_level=None)
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the pages in the main file
        checkpoint.close()
        corrupt_messages_root(data_dir / "chatplane.db")
        alice = Client(server.url, signer.mint("alice", "phone"))
        await alice.connect()
        conv = await alice.direct("bob")
        with pytest.raises(RequestError):
            await alice.history(conv, limit=100)
        await alice.close()
        body = await wait_readyz(server, 503, 5)
        (problem,) = body["problems"]  # type: ignore[misc]
        assert problem.startswith("storage corrupt: ") and "malformed" in problem
    finally:
        server.stop()
