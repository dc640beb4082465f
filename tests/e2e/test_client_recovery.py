"""SDK behaviour at the edges: a message too big for a frame, a server whose
storage lost history, requests during an outage, what `reconnects` counts."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from chatplane.auth import TOKEN_KEY_FILE, TokenSigner
from chatplane.client import Client, ErrorCode, RequestError
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


async def test_oversized_send_is_refused_and_later_sends_flow(server: ServerProcess,
                                                            signer: TokenSigner) -> None:
    alice = Client(server.url, signer.mint("alice"))
    await alice.connect()
    conversation = await alice.direct("bob")
    with pytest.raises(RequestError) as err:
        await alice.send_text(conversation, "x" * 70_000)
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RequestError) as err:  # fits a frame, over the text limit
        await alice.send_text(conversation, "y" * 20_000)
    assert err.value.code == ErrorCode.INVALID_ARGUMENT
    ack = await asyncio.wait_for(alice.send_text(conversation, "small"), 10)
    assert ack.seq == 1 and alice.reconnects == 0
    await alice.close()


async def _texts(client: Client, count: int) -> list[str]:
    """The next `count` message texts the client delivers."""
    texts = []
    async for m in client.messages():
        texts.append(m.text)
        if len(texts) == count:
            break
    return texts


async def _chat_then_lose_the_store(server: ServerProcess, signer: TokenSigner
                                    ) -> tuple[Client, Client]:
    """alice sends bob 5 messages, bob gets them; then the server is killed
    and its store lost (only the token key survives); the caller restarts it."""
    alice, bob = Client(server.url, signer.mint("alice")), Client(server.url, signer.mint("bob"))
    await alice.connect()
    await bob.connect()
    conversation = await alice.direct("bob")
    for i in range(5):
        await alice.send_text(conversation, f"old-{i}")
    assert await _texts(bob, 5) == [f"old-{i}" for i in range(5)]
    server.kill()
    for path in server.data_dir.iterdir():
        if path.name != TOKEN_KEY_FILE:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return alice, bob


async def test_server_that_lost_history_is_resynced(server: ServerProcess,
                                                    signer: TokenSigner) -> None:
    alice, bob = await _chat_then_lose_the_store(server, signer)
    server.start()
    await asyncio.sleep(0.5)
    conversation = await alice.direct("bob")
    for i in range(3):
        await asyncio.wait_for(alice.send_text(conversation, f"new-{i}"), 20)
    assert await _texts(bob, 3) == ["new-0", "new-1", "new-2"] and bob.store_resets == 1
    await alice.close()
    await bob.close()


async def test_a_store_wiped_and_refilled_past_the_cursor_is_detected(
        server: ServerProcess, signer: TokenSigner) -> None:
    """The store is wiped and then gets more messages for bob than his cursor
    counted in the old one, while bob is away: the inbox head alone cannot
    tell, the store id does. Bob, back with his saved position, gets every
    message of the new store, not only those past his old cursor."""
    alice, bob = await _chat_then_lose_the_store(server, signer)
    position = bob.position()
    assert position["store_id"] and position["inbox_seq"] == 5
    await bob.close()
    server.start()
    conversation = await alice.direct("bob")
    for i in range(8):  # past bob's old cursor (5)
        await asyncio.wait_for(alice.send_text(conversation, f"new-{i}"), 20)
    bob = Client(server.url, signer.mint("bob"), resume=position)
    await bob.connect()
    assert await _texts(bob, 8) == [f"new-{i}" for i in range(8)] and bob.store_resets == 1
    assert bob.position()["store_id"] != position["store_id"]
    await alice.close()
    await bob.close()


async def test_requests_give_up_during_an_outage_and_reconnects_count_successes(
        server: ServerProcess, signer: TokenSigner) -> None:
    alice = Client(server.url, signer.mint("alice"), request_timeout_s=2.0)
    await alice.connect()
    server.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestError) as err:
        await alice.direct("bob")
    assert err.value.code == ErrorCode.UNAVAILABLE and loop.time() - started < 5
    await asyncio.sleep(1.5)  # several failed attempts: none of them is a reconnect
    assert alice.reconnects == 0
    server.start()
    for _ in range(100):
        if alice.reconnects:
            break
        await asyncio.sleep(0.1)
    assert alice.reconnects == 1
    assert await alice.direct("bob") == "d:alice:bob"
    await alice.close()
