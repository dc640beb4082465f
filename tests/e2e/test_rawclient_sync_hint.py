"""The bench's raw client pulls what a SyncHint says it missed, as the SDK does: against a
real `chatplane up` whose push window is 4, a raw client that stops reading while 12
messages are sent to it overflows its window; once it reads again it gets the pushes the
window held and a SyncHint, syncs, and ends at the last message's inbox entry. It counts
why each of its connections ended (the node rollout test prints them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.bench.rawclient import Dispatcher, RawClient
from chatplane.client import Client
from tests.support.server import ServerProcess

WINDOW = 4
MESSAGES = 12


@pytest.fixture
def small_window_server(data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir, env={"CHATPLANE_PUSH_WINDOW": str(WINDOW)})
    proc.start()
    yield proc
    proc.stop()


async def test_raw_client_syncs_after_a_sync_hint(small_window_server: ServerProcess,
                                                  signer: TokenSigner) -> None:
    dispatcher = Dispatcher(small_window_server.url)
    raw = RawClient(dispatcher, "carol", signer.mint("carol", "raw"))
    dave = Client(small_window_server.url, signer.mint("dave", "phone"))
    raw.start()
    try:
        await asyncio.wait_for(raw.resumed.wait(), 10)
        transport = raw._transport
        assert transport is not None
        transport.pause_reading()  # nothing read, nothing acked: the window fills
        await dave.connect()
        conversation = await dave.direct("carol")
        for i in range(MESSAGES):
            await asyncio.wait_for(dave.send_text(conversation, f"m{i}"), 10)
        await asyncio.sleep(0.5)  # the pushes and the hint reach the socket
        transport.resume_reading()
        for _ in range(100):
            if raw.inbox_seq >= MESSAGES:
                break
            await asyncio.sleep(0.1)
        assert raw.inbox_seq == MESSAGES, raw.inbox_seq
        assert raw.synced > 0, "everything came by push: the window never overflowed"
        # and it says why a connection ended: cut here, then resumed
        raw.drop()
        await asyncio.wait_for(raw.logged_in_more_than(1), 10)
        assert dict(raw.ends) == {"dropped here": 1}, raw.ends
    finally:
        await dave.close()
        await raw.close()
        await dispatcher.close()
