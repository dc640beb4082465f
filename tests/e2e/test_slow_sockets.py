"""Slow and idle sockets against a real `chatplane up`: thousands of sockets
that say nothing, or drip an HTTP head or a TCP frame a byte at a time, are
closed within the documented timeouts (abuse.header_timeout_s on the HTTP
port, limits.login_timeout_ms on the TCP port), and while they are open new
clients log in and chat on both transports."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

TIMEOUT_S = 2.0
# login deadlines are looked at once a second in one-second buckets (up to
# ~2 s late, docs/operations.md); then a loaded 2-core machine. The times are
# taken from the attacker's side, whose loop runs late under 5,000 sockets:
# they come out shorter than the server's own, never longer. A loaded CI machine
# made it 6.3 s once; the bound stays well below the 10 s defaults, so it still
# shows the configured 2 s is what closes them.
SLACK_S = 5.0
ATTACKERS = 5000
ATTACKER_IP = "127.0.0.2"  # per-address accounting apart from the clients' 127.0.0.1


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3 * ATTACKERS:
        pytest.skip(f"open-file hard limit {hard} < {3 * ATTACKERS}")
    wanted = 3 * ATTACKERS if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))  # the server inherits
    proc = ServerProcess(tmp_path_factory.mktemp("slow"), env={
        "CHATPLANE_HEADER_TIMEOUT_S": str(TIMEOUT_S),
        "CHATPLANE_LOGIN_TIMEOUT_MS": str(int(TIMEOUT_S * 1000)),
        "CHATPLANE_MAX_CONNECTIONS_PER_IP": str(2 * ATTACKERS),
    })
    proc.start()
    yield proc
    proc.stop()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def attacker(port: int, drip: bytes, opened: list[float],
                   closed: list[tuple[float, int, bytes]]) -> None:
    """One socket: connect, then drip `drip` a byte a second (nothing when
    empty) until the server closes it; records when it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(ATTACKER_IP, 0))
    started = time.monotonic()
    opened.append(started)

    async def until_closed() -> None:
        try:
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass

    watcher = asyncio.create_task(until_closed())
    for byte in drip:
        if watcher.done():
            break
        writer.write(bytes([byte]))
        await asyncio.wait({watcher}, timeout=1.0)
    await watcher
    closed.append((time.monotonic() - started, port, drip[:4]))
    writer.close()


async def chat_while(server: ServerProcess, signer: TokenSigner) -> float:
    """Two users log in (WebSocket and TCP) and exchange messages; seconds taken."""
    started = time.monotonic()
    ann = Client(server.url, signer.mint("ann", "phone"))
    bob = Client(server.url, signer.mint("bob", "phone"), transport="tcp")
    await ann.connect(timeout_s=10)
    await bob.connect(timeout_s=10)
    direct = await ann.direct("bob")
    for i in range(5):
        await ann.send_text(direct, f"a{i}")
        await bob.send_text(direct, f"b{i}")
    got = []
    async for message in bob.messages():
        got.append(message.text)
        if len(got) == 10:
            break
    assert [t for t in got if t.startswith("a")] == [f"a{i}" for i in range(5)]
    await ann.close()
    await bob.close()
    return time.monotonic() - started


async def test_silent_and_dripping_sockets_are_closed_and_do_not_stop_clients(
        slow_server: ServerProcess) -> None:
    signer = TokenSigner.from_data_dir(slow_server.data_dir)
    # an HTTP head that never ends, and a TCP frame prefix promising 1000 bytes
    http_drip = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: " + b"a" * 64
    tcp_drip = b"\x00\x00\x03\xe8" + b"\x0a" * 64
    kinds = [(slow_server.port, b""), (slow_server.port, http_drip),
             (slow_server.tcp_port, b""), (slow_server.tcp_port, tcp_drip)]
    opened: list[float] = []
    closed: list[tuple[float, int, bytes]] = []
    tasks = []
    for n in range(ATTACKERS):
        port, drip = kinds[n % 4]
        tasks.append(asyncio.create_task(attacker(port, drip, opened, closed)))
        if n % 250 == 249:
            await asyncio.sleep(0)  # let the connects go out
    while len(opened) < ATTACKERS and not any(t.done() and t.exception() for t in tasks):
        await asyncio.sleep(0.05)
    assert len(opened) == ATTACKERS, [t.exception() for t in tasks if t.done()][:3]
    # every attacker is connected: new clients still log in and chat, quickly
    took = await chat_while(slow_server, signer)
    assert took < 10, took
    print(f"login + 10 messages beside {ATTACKERS} slow sockets: {took:.2f} s")
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S + SLACK_S + 30)
    assert len(closed) == ATTACKERS
    # each closed within the documented bound (measured from its own connect)
    assert max(closed)[0] < TIMEOUT_S + SLACK_S, sorted(closed)[-5:]
    for port, name in ((slow_server.port, "http"), (slow_server.tcp_port, "tcp")):
        times = sorted(t for t, p, _ in closed if p == port)
        print(f"{name}: closed after {times[0]:.2f} .. {times[len(times) // 2]:.2f} (median)"
              f" .. {times[-1]:.2f} s")


def test_refused_settings_fail_at_start(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path, env={"CHATPLANE_HEADER_TIMEOUT_S": "nan"})
    with pytest.raises(RuntimeError, match="header_timeout_s"):
        proc.start(timeout_s=10)


async def test_a_logged_in_websocket_outlives_the_header_timeout(
        slow_server: ServerProcess) -> None:
    """The bounds are on saying who you are, not on how long you stay."""
    signer = TokenSigner.from_data_dir(slow_server.data_dir)
    client = Client(slow_server.url, signer.mint("stay", "phone"), heartbeat_s=0.5)
    await client.connect()
    await asyncio.sleep(TIMEOUT_S + SLACK_S)
    assert (await client.send_text(await client.direct("ann"), "still here")).seq >= 1
    assert client.reconnects == 0
    await client.close()
