"""Bad input against a real server: every case gets its documented error code
and/or a close, while a good pair of clients keeps chatting and nothing stored
is corrupted."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client, RequestError
from chatplane.protocol.errors import ErrorCode
from chatplane.v1 import frames_pb2 as pb
from tests.support.server import ServerProcess
from tests.support.traffic import Device, send_many, wait_until_received

pytestmark = pytest.mark.slow

RATE = 50


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("strict")
    proc = ServerProcess(data_dir, env={
        "CHATPLANE_RATE_LIMIT_FRAMES_PER_S": str(RATE),
        "CHATPLANE_RATE_LIMIT_BURST": str(RATE),
        "CHATPLANE_MAX_FRAME_BYTES": "4096",
    })
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def strict_signer(strict_server: ServerProcess) -> TokenSigner:
    return TokenSigner.from_data_dir(strict_server.data_dir)


@pytest.fixture
async def ws(strict_server: ServerProcess) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(strict_server.url + "/ws") as socket:
            yield socket


def login_frame(token: str, request_id: int = 1) -> bytes:
    return pb.Frame(id=request_id, login=pb.Login(protocol_version=1, token=token)).SerializeToString()


async def read_frames(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> tuple[
        list[pb.Frame], bool]:
    """Frames until the server closes or goes quiet; (frames, closed)."""
    frames: list[pb.Frame] = []
    while True:
        try:
            msg = await ws.receive(timeout)
        except TimeoutError:
            return frames, False
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return frames, True
        frame = pb.Frame()
        frame.ParseFromString(msg.data)
        frames.append(frame)


def errors(frames: list[pb.Frame]) -> list[int]:
    return [f.error.code for f in frames if f.WhichOneof("body") == "error"]


async def test_random_bytes_close_with_bad_frame(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_bytes(b"\xff\xff\xff\xff garbage")
    frames, closed = await read_frames(ws)
    assert errors(frames) == [ErrorCode.BAD_FRAME] and closed


async def test_frame_before_login_is_refused(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_bytes(pb.Frame(id=7, send=pb.Send(conversation_id="x", cid=1)).SerializeToString())
    frames, closed = await read_frames(ws)
    assert errors(frames) == [ErrorCode.NOT_LOGGED_IN] and frames[0].id == 7 and closed


async def test_oversized_frame(ws: aiohttp.ClientWebSocketResponse,
                               strict_signer: TokenSigner) -> None:
    await ws.send_bytes(login_frame(strict_signer.mint("eve")))
    await ws.send_bytes(pb.Frame(id=2, send=pb.Send(conversation_id="x", cid=1,
                                                    text="x" * 5000)).SerializeToString())
    frames, closed = await read_frames(ws)
    assert errors(frames) == [ErrorCode.FRAME_TOO_LARGE] and closed


async def test_unknown_frame_kind_is_an_error_not_a_close(
        ws: aiohttp.ClientWebSocketResponse, strict_signer: TokenSigner) -> None:
    await ws.send_bytes(login_frame(strict_signer.mint("eve")))
    first = pb.Frame.FromString((await ws.receive(5)).data)
    assert first.WhichOneof("body") == "login_ack"
    await ws.send_bytes(pb.Frame(id=3, login_ack=pb.LoginAck()).SerializeToString())
    await ws.send_bytes(pb.Frame(id=4, heartbeat=pb.Heartbeat(client_time_ms=1)).SerializeToString())
    frames, closed = await read_frames(ws, timeout=1.0)
    kinds = [f.WhichOneof("body") for f in frames]
    assert kinds == ["error", "heartbeat_ack"] and not closed
    assert errors(frames) == [ErrorCode.UNKNOWN_FRAME] and frames[0].id == 3


@pytest.mark.parametrize(("token", "code"), [
    ("", ErrorCode.AUTH_FAILED),
    ("not-a-token", ErrorCode.AUTH_FAILED),
    ("forged", ErrorCode.AUTH_FAILED),
    ("expired", ErrorCode.TOKEN_EXPIRED),
])
async def test_bad_tokens(ws: aiohttp.ClientWebSocketResponse, strict_signer: TokenSigner,
                          token: str, code: ErrorCode) -> None:
    if token == "forged":
        token = TokenSigner(os.urandom(32)).mint("eve")
    elif token == "expired":
        token = strict_signer.mint("eve", ttl_s=-10)
    await ws.send_bytes(login_frame(token))
    frames, closed = await read_frames(ws)
    assert errors(frames) == [code] and closed


async def test_send_to_a_conversation_one_is_not_in(strict_server: ServerProcess,
                                                    strict_signer: TokenSigner) -> None:
    outsider = Client(strict_server.url, strict_signer.mint("mallory"))
    await outsider.connect()
    for conv in ("d:alice:bob", "no-such-thing"):
        with pytest.raises(RequestError) as err:
            await outsider.send_text(conv, "let me in")
        assert err.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(RequestError) as err:
            await outsider.history(conv)
        assert err.value.code == ErrorCode.FORBIDDEN
    await outsider.close()


async def test_flood_is_rate_limited_then_closed(ws: aiohttp.ClientWebSocketResponse,
                                                 strict_signer: TokenSigner) -> None:
    await ws.send_bytes(login_frame(strict_signer.mint("flooder")))
    heartbeat = pb.Frame(id=9, heartbeat=pb.Heartbeat()).SerializeToString()
    for _ in range(RATE * 8):
        if ws.closed:
            break
        await ws.send_bytes(heartbeat)
    frames, closed = await read_frames(ws)
    codes = errors(frames)
    assert ErrorCode.RATE_LIMITED in codes and closed


async def test_tcp_truncated_and_garbage(strict_server: ServerProcess) -> None:
    # a truncated frame then EOF: the server just drops the connection
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_server.tcp_port)
    writer.write(struct.pack(">I", 100) + b"\x08" * 50)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    # a length over the limit: FRAME_TOO_LARGE, then close
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_server.tcp_port)
    writer.write(struct.pack(">I", 10_000_000))
    data = await asyncio.wait_for(reader.read(), 5)
    (length,) = struct.unpack(">I", data[:4])
    frame = pb.Frame()
    frame.ParseFromString(data[4:4 + length])
    assert frame.error.code == ErrorCode.FRAME_TOO_LARGE and frame.error.fatal
    writer.close()
    # random bytes of random lengths
    rng = random.Random(7)
    for _ in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", strict_server.tcp_port)
        writer.write(rng.randbytes(rng.randint(1, 300)))
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 5)
        writer.close()


async def test_others_keep_being_served_during_abuse(strict_server: ServerProcess,
                                                     strict_signer: TokenSigner) -> None:
    checker = DeliveryChecker()
    devices = []
    for user in ("gina", "hank"):
        client = Client(strict_server.url, strict_signer.mint(user, "phone"))
        await client.connect()
        device = Device(client, user, "phone", checker)
        device.start()
        devices.append(device)
    conv = await devices[0].client.direct("hank")
    checker.add_member(conv, "gina")
    checker.add_member(conv, "hank")

    async def abuse() -> None:
        rng = random.Random(1)
        async with aiohttp.ClientSession() as http:
            for i in range(60):
                async with http.ws_connect(strict_server.url + "/ws") as socket:
                    await socket.send_bytes(rng.randbytes(rng.randint(1, 200)) if i % 2 else
                                            login_frame("forged." + "A" * i))
                    await read_frames(socket, timeout=1)

    await asyncio.gather(abuse(), send_many(devices[0], conv, 40, "ok", in_flight=2))
    await wait_until_received(devices, 40, timeout_s=30)
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary()
    history = await devices[1].client.history(conv, limit=100)
    assert [m.seq for m in history] == list(range(1, 41))
    assert all(m.text.startswith("ok-") for m in history)
    for device in devices:
        await device.stop()


async def test_websocket_pings_are_answered_and_close_frames_closed(
        strict_server: ServerProcess) -> None:
    """The server answers WebSocket pings itself (aiohttp's autoping is off
    so nothing but the connection writes to a socket it may lend to the
    group writer), and a client's close is answered with a close."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(strict_server.url + "/ws", autoping=False) as socket:
            await socket.ping(b"are you there")
            msg = await asyncio.wait_for(socket.receive(), 5)
            assert msg.type is aiohttp.WSMsgType.PONG and msg.data == b"are you there"
            await socket.close()
            assert socket.closed
            assert socket.close_code == aiohttp.WSCloseCode.OK


async def test_websocket_text_and_oversized_messages(strict_server: ServerProcess,
                                                     strict_signer: TokenSigner) -> None:
    """The gateway serves an upgraded socket itself (protocol/websocket.py):
    a text message is a fatal BAD_FRAME error, and a message over twice the
    frame limit closes the socket with 1009 before it is buffered."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(strict_server.url + "/ws") as socket:
            await socket.send_bytes(login_frame(strict_signer.mint("tia")))
            await socket.send_str("hello")
            frames, closed = await read_frames(socket)
            assert errors(frames) == [ErrorCode.BAD_FRAME] and closed
        async with http.ws_connect(strict_server.url + "/ws") as socket:
            await socket.send_bytes(b"\x00" * (2 * 4096 + 1))
            frames, closed = await read_frames(socket)
            assert frames == [] and closed
            assert socket.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_bad_upgrade_is_refused_and_a_kept_alive_connection_upgrades(
        strict_server: ServerProcess, strict_signer: TokenSigner) -> None:
    """A bad upgrade request gets 400 from aiohttp; an upgrade on a connection
    that already served a request (as the SDK's session reuses its dispatch
    call's) is handed over to the gateway like a fresh one."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        async with http.get(strict_server.url + "/ws", headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "bad"}) as response:
            assert response.status == 400
        async with http.get(strict_server.url + "/healthz") as response:
            assert response.status == 200
        async with http.ws_connect(strict_server.url + "/ws") as socket:
            await socket.send_bytes(login_frame(strict_signer.mint("uma")))
            msg = await socket.receive(5)
            assert pb.Frame.FromString(msg.data).WhichOneof("body") == "login_ack"
            await socket.close()
            assert socket.close_code == aiohttp.WSCloseCode.OK
