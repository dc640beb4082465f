"""Abuse limits against a real `chatplane up`: connection caps per address
and in total on both listeners, the per-user send rate and
max_inflight_sends (refused, retried by the SDK in order, nothing lost or
reordered), and the SDK refusing what the server could not take."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import Iterator

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client, ErrorCode, RequestError
from chatplane.v1 import frames_pb2 as pb
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

PER_IP = 6
TOTAL = 14
RATE = 20
INFLIGHT = 4


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("capped"), env={
        "CHATPLANE_MAX_CONNECTIONS_PER_IP": str(PER_IP),
        "CHATPLANE_MAX_CONNECTIONS": str(TOTAL),
        "CHATPLANE_PER_IP_EXEMPT": "",
    })
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("paced"), env={
        "CHATPLANE_SEND_RATE_PER_USER_S": str(RATE),
        "CHATPLANE_SEND_BURST_PER_USER": str(RATE),
        "CHATPLANE_MAX_INFLIGHT_SENDS": str(INFLIGHT),
    })
    proc.start()
    yield proc
    proc.stop()


async def hold(port: int, ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))


async def refused_http(port: int, ip: str) -> dict[str, object]:
    reader, writer = await hold(port, ip)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), head
    return dict(json.loads(body))


async def refused_tcp(port: int, ip: str) -> pb.Error:
    reader, writer = await hold(port, ip)
    (length,) = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 5))
    frame = pb.Frame.FromString(await reader.readexactly(length))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed
    writer.close()
    return frame.error


async def test_caps_per_address_and_in_total(capped: ServerProcess) -> None:
    held = [await hold(capped.port, "127.0.0.2") for _ in range(PER_IP // 2)]
    held += [await hold(capped.tcp_port, "127.0.0.2") for _ in range(PER_IP - PER_IP // 2)]
    await asyncio.sleep(0.2)
    # one address over its cap, on either listener
    body = await refused_http(capped.port, "127.0.0.2")
    assert body["code"] == ErrorCode.TOO_MANY_CONNECTIONS and body["retriable"] is True
    error = await refused_tcp(capped.tcp_port, "127.0.0.2")
    assert error.code == ErrorCode.TOO_MANY_CONNECTIONS and error.fatal and error.retriable
    # another address still gets in and chats
    signer = TokenSigner.from_data_dir(capped.data_dir)
    client = Client(capped.url, signer.mint("ann", "phone"))
    await client.connect()
    assert (await client.send_text(await client.direct("bob"), "hi")).seq == 1
    await client.close()
    # the total: fill it from other addresses, then even a new address is refused
    held += [await hold(capped.port, f"127.0.0.{3 + n // PER_IP}") for n in range(TOTAL - PER_IP)]
    await asyncio.sleep(0.2)
    body = await refused_http(capped.port, "127.0.0.9")
    assert "maximum of 14 connections" in str(body["message"]), body
    # the SDK backs off while the gateway is full, and gets in once places free
    late = Client(capped.url, signer.mint("late", "phone"))
    connecting = asyncio.create_task(late.connect(timeout_s=20))
    await asyncio.sleep(1.0)
    assert not connecting.done()
    for _, writer in held[:4]:
        writer.close()
    await connecting
    assert (await late.send_text(await late.direct("ann"), "in")).seq == 1
    await late.close()
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as http, http.get(capped.url + "/healthz") as r:
        assert r.status == 200
    for _, writer in held[4:]:
        writer.close()


async def raw_login(server: ServerProcess, token: str) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, pb.LoginAck]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
    writer.write(frame_bytes(pb.Frame(id=1, login=pb.Login(protocol_version=1, token=token))))
    return reader, writer, (await read_frame(reader)).login_ack


def frame_bytes(frame: pb.Frame) -> bytes:
    payload = frame.SerializeToString()
    return struct.pack("!I", len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> pb.Frame:
    """The next reply (pushes of the user's own messages, id 0, are skipped)."""
    while True:
        (length,) = struct.unpack("!I", await asyncio.wait_for(reader.readexactly(4), 5))
        frame = pb.Frame.FromString(await reader.readexactly(length))
        if frame.id:
            return frame


async def test_inflight_refusals_keep_the_order(paced: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(paced.data_dir)
    reader, writer, ack = await raw_login(paced, signer.mint("raw", "phone"))
    assert ack.max_inflight_sends == INFLIGHT
    writer.write(frame_bytes(pb.Frame(id=2, open_direct=pb.OpenDirect(peer_user_id="peer"))))
    conversation = (await read_frame(reader)).open_direct_ack.conversation_id
    # ten sends in one write: four go in; the fifth is over max_inflight_sends,
    # and the later ones are refused so none can overtake it
    writer.write(b"".join(frame_bytes(pb.Frame(id=10 + cid, send=pb.Send(
        conversation_id=conversation, cid=cid, text=f"m{cid}"))) for cid in range(1, 11)))
    replies = {f.id - 10: f for f in [await read_frame(reader) for _ in range(10)]}
    acked = sorted(c for c, f in replies.items() if f.WhichOneof("body") == "send_ack")
    assert acked == [1, 2, 3, 4], replies
    assert replies[5].error.code == ErrorCode.TOO_MANY_INFLIGHT and replies[5].error.retriable
    assert all(replies[c].error.code == ErrorCode.RATE_LIMITED for c in range(6, 11))
    # a later cid before the refused one comes again is still refused
    writer.write(frame_bytes(pb.Frame(id=30, send=pb.Send(conversation_id=conversation, cid=7,
                                                          text="m7"))))
    assert (await read_frame(reader)).error.code == ErrorCode.RATE_LIMITED
    for cid in range(5, 11):  # resent from the refused cid, in order: all in
        writer.write(frame_bytes(pb.Frame(id=40 + cid, send=pb.Send(
            conversation_id=conversation, cid=cid, text=f"m{cid}"))))
        assert (await read_frame(reader)).send_ack.seq == cid
    writer.close()


async def test_sdk_over_the_user_rate_loses_and_reorders_nothing(paced: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(paced.data_dir)
    phone = Client(paced.url, signer.mint("fast", "phone"))
    laptop = Client(paced.url, signer.mint("fast", "laptop"), transport="tcp")
    await phone.connect()
    await laptop.connect()
    direct = await phone.direct("slow")
    assert phone.max_inflight_sends == INFLIGHT
    started = time.monotonic()
    count = 3 * RATE
    acks = await asyncio.gather(*(phone.send_text(direct, f"p{i}") for i in range(count)),
                                *(laptop.send_text(direct, f"l{i}") for i in range(count)))
    took = time.monotonic() - started
    # one user's devices share the rate: 2 * count sends at RATE/s after a burst of RATE
    assert took >= (2 * count - RATE) / RATE * 0.8, took
    assert phone.send_retries + laptop.send_retries > 0
    assert sorted(a.seq for a in acks) == list(range(1, 2 * count + 1))  # each stored once
    history = await phone.history(direct, limit=200)
    for device in ("p", "l"):  # each device's messages in the order it sent them
        texts = [m.text for m in history if m.text.startswith(device)]
        assert texts == [f"{device}{i}" for i in range(count)]
    await phone.close()
    await laptop.close()


async def test_other_writes_share_the_user_budget(paced: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(paced.data_dir)
    reader, writer, _ = await raw_login(paced, signer.mint("marker", "phone"))
    writer.write(b"".join(frame_bytes(pb.Frame(id=100 + n, friend_op=pb.FriendOp(
        action=pb.REQUEST, user_id=f"friend{n}"))) for n in range(2 * RATE)))
    replies = [await read_frame(reader) for _ in range(2 * RATE)]
    codes = [f.error.code for f in replies if f.WhichOneof("body") == "error"]
    assert len(codes) >= RATE // 2 and set(codes) == {ErrorCode.RATE_LIMITED}, codes
    writer.close()


async def test_sdk_refuses_a_frame_over_the_limit_without_sending_it(
        paced: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(paced.data_dir)
    client = Client(paced.url, signer.mint("big", "phone"))
    await client.connect()
    members = [f"member-{i:05d}" for i in range(9999)]
    await asyncio.sleep(0.3)  # the sync after the login is a request too
    requests, reconnects = client.requests, client.reconnects
    started = time.monotonic()
    with pytest.raises(RequestError) as err:
        await client._request(pb.Frame(group_create=pb.GroupCreate(name="big",
                                                                   members=members)))
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE and not err.value.retriable
    assert "not sent" in err.value.message
    with pytest.raises(RequestError) as err:
        await client.send_text(await client.direct("other"), "x" * 70_000)
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE
    assert time.monotonic() - started < 1.0  # no retries, no waiting
    assert client.requests == requests + 1  # the direct() only
    await asyncio.sleep(0.5)
    assert client.reconnects == reconnects  # never closed by the server for it
    await client.close()


async def test_sdk_never_retries_a_refusal(paced: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(paced.data_dir)
    client = Client(paced.url, signer.mint("nosy", "phone"))
    await client.connect()
    await asyncio.sleep(0.3)  # the sync after the login is a request too
    requests = client.requests
    with pytest.raises(RequestError) as err:
        await client.history("g:nobody-knows")
    assert not err.value.retriable and client.requests == requests + 1
    await client.close()
