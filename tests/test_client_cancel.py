"""A client task told to stop stops, even when its cancel arrives just as the
reply it awaits does (Python 3.11's asyncio.wait_for then returns the reply
instead of raising): otherwise `Client.close()` right after `connect()` could
wait out request_timeout_s while its sync task sent one more request on a
connection nobody read any more."""

from __future__ import annotations

import asyncio

import pytest

from chatplane.client import Client
from chatplane.client.client import _Connection
from chatplane.v1 import frames_pb2 as pb


class SilentLink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    async def recv(self) -> bytes:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def test_a_request_cancelled_as_its_reply_arrives_is_cancelled() -> None:
    client = Client("http://127.0.0.1:1", "token", request_timeout_s=30)
    link = SilentLink()
    conn = _Connection(link)
    client._conn = conn
    client._connected.set()
    task = asyncio.get_running_loop().create_task(client._request(pb.Frame(
        sync=pb.SyncRequest(after_inbox_seq=0, limit=10))))
    for _ in range(5):  # the request is sent and awaits its reply
        await asyncio.sleep(0)
    [(request_id, reply)] = conn.waiting.items()
    assert request_id and len(link.sent) == 1
    reply.set_result(pb.Frame(id=request_id, sync_response=pb.SyncResponse()))
    task.cancel()  # in the same loop iteration as the reply
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert len(link.sent) == 1
