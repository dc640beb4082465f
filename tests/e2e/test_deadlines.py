"""Login and heartbeat deadlines against a real server: the gateway's sweep
looks at a connection only when one of its deadlines could have passed
(`gateway/deadlines.py`), and still closes the silent ones in time while a
client that keeps talking stays."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner
from chatplane.protocol.errors import ErrorCode
from chatplane.v1 import frames_pb2 as pb
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

HEARTBEAT_MS = 400  # silent for 3 intervals (1.2 s): closed
LOGIN_MS = 600
SWEEP_S = 1.0  # deadlines are looked at once a second


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("deadlines")
    proc = ServerProcess(data_dir, env={"CHATPLANE_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
                                        "CHATPLANE_LOGIN_TIMEOUT_MS": str(LOGIN_MS)})
    proc.start()
    yield proc
    proc.stop()


async def closed_with(socket: aiohttp.ClientWebSocketResponse, timeout: float) -> list[int]:
    """The error codes the server sent before closing; fails if it did not close."""
    codes = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await socket.receive(max(0.01, deadline - time.monotonic()))
        if msg.type is not aiohttp.WSMsgType.BINARY:
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            return codes
        frame = pb.Frame()
        frame.ParseFromString(msg.data)
        if frame.WhichOneof("body") == "error":
            codes.append(frame.error.code)


async def log_in(socket: aiohttp.ClientWebSocketResponse, token: str) -> None:
    await socket.send_bytes(pb.Frame(id=1, login=pb.Login(protocol_version=1, token=token))
                            .SerializeToString())
    frame = pb.Frame()
    frame.ParseFromString((await socket.receive(5)).data)
    assert frame.WhichOneof("body") == "login_ack", frame


async def test_silent_connections_are_closed_and_a_talking_one_stays(
        quick_server: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(quick_server.data_dir)
    url = quick_server.url + "/ws"
    async with aiohttp.ClientSession() as http:
        never, silent, talking = [await http.ws_connect(url) for _ in range(3)]
        await log_in(silent, signer.mint("silent", "phone"))
        await log_in(talking, signer.mint("talking", "phone"))
        began = time.monotonic()

        async def keep_talking() -> None:
            for i in range(int(3 * (3 * HEARTBEAT_MS / 1000 + SWEEP_S) / 0.2)):
                await talking.send_bytes(pb.Frame(id=10 + i, heartbeat=pb.Heartbeat())
                                         .SerializeToString())
                await asyncio.sleep(0.2)

        talker = asyncio.create_task(keep_talking())
        budget = 3 * HEARTBEAT_MS / 1000 + 2 * SWEEP_S + 1.0  # the deadline, a round, slack
        assert await closed_with(never, budget) == [ErrorCode.NOT_LOGGED_IN]
        assert await closed_with(silent, budget) == [ErrorCode.HEARTBEAT_TIMEOUT]
        closed_after = time.monotonic() - began
        assert closed_after >= 3 * HEARTBEAT_MS / 1000 - 0.1  # not before its deadline
        await talker
        # the talking client outlived several deadlines of a silent one, and still answers
        assert not talking.closed
        await talking.send_bytes(pb.Frame(id=99, heartbeat=pb.Heartbeat()).SerializeToString())
        answers = []
        while not answers or answers[-1].id != 99:
            frame = pb.Frame()
            frame.ParseFromString((await talking.receive(5)).data)
            answers.append(frame)
        assert {f.WhichOneof("body") for f in answers} == {"heartbeat_ack"}
        for socket in (never, silent, talking):
            await socket.close()
