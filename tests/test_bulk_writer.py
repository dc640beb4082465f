"""The group writer (gateway/bulk.py) on real TCP sockets and a real event
loop (the servers' uvloop runs it in tests/e2e/test_group_crowd.py): a lent socket's byte stream stays whole —
the frame first, then whatever the connection wrote meanwhile, in order,
also when the kernel takes only part of the frame — a close waits for the
socket to come back, and a connection closed while lent never has its fd
number written to after it is reused."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator

import pytest

from chatplane.gateway import bulk
from chatplane.gateway.bulk import BulkWriter, Handoff, Lent, SocketLender
from chatplane.protocol import wire
from chatplane.storage.base import StoredMessage
from tests.support.fanout import fanout_to

pytestmark = pytest.mark.skipif(BulkWriter.create() is None,
                                reason="chatplane._sendeach was not built (no C compiler)")


class Sink(asyncio.Protocol):
    """The server side of one connection, written to through a SocketLender."""

    def __init__(self, accepted: asyncio.Queue[Sink]) -> None:
        self.accepted = accepted
        self.out: SocketLender | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.out = SocketLender(transport, 64 * 1024 * 1024)  # type: ignore[arg-type]
        self.accepted.put_nowait(self)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.out is not None
        self.out.lost()
        if not self.closed.done():
            self.closed.set_result(None)


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, asyncio.Queue[Sink]]]:
    accepted: asyncio.Queue[Sink] = asyncio.Queue()
    srv = await asyncio.get_running_loop().create_server(lambda: Sink(accepted), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield port, accepted
    srv.close()
    await srv.wait_closed()


@pytest.fixture
async def writer() -> AsyncIterator[BulkWriter]:
    bulk = BulkWriter.create(nice=0)
    assert bulk is not None
    yield bulk
    bulk.stop()


async def connect(server: tuple[int, asyncio.Queue[Sink]], rcvbuf: int = 0,
                  ) -> tuple[socket.socket, Sink]:
    port, accepted = server
    client = socket.socket()
    if rcvbuf:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    return client, await asyncio.wait_for(accepted.get(), 5)


async def lent_socket(server: tuple[int, asyncio.Queue[Sink]], frame: bytes, rcvbuf: int = 0,
                      ) -> tuple[socket.socket, Sink, SocketLender, Lent]:
    """A fresh connection whose socket is lent, to write `frame` to."""
    client, sink = await connect(server, rcvbuf)
    assert sink.out is not None
    item = sink.out.lend(frame)
    assert item is not None
    return client, sink, sink.out, item


async def read_exactly(client: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):
        while len(data) < n:
            chunk = await loop.sock_recv(client, n - len(data))
            assert chunk, f"closed after {len(data)} of {n} bytes"
            data += chunk
    return data


async def test_frames_reach_every_lent_socket(server: tuple[int, asyncio.Queue[Sink]],
                                              writer: BulkWriter) -> None:
    pairs = [await connect(server) for _ in range(40)]
    frame = b"group frame " * 10
    lent = []
    for _, sink in pairs:
        assert sink.out is not None
        item = sink.out.lend(frame)
        assert item is not None
        lent.append(item)
    await writer.submit(lent)
    for client, sink in pairs:
        assert sink.out is not None and not sink.out.lent
        assert await read_exactly(client, len(frame)) == frame
        client.close()


async def test_what_is_written_while_lent_follows_the_frame_in_order(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    client, _, out, item = await lent_socket(server, b"<frame>")
    assert out.lend(b"<again>") is None  # one lend at a time
    out.write(b"<one>")
    out.write(b"<two>")
    pending = writer.submit([item])
    out.write(b"<three>")  # after the hand-off, before the socket is back
    await pending
    out.write(b"<four>")
    expected = b"<frame><one><two><three><four>"
    assert await read_exactly(client, len(expected)) == expected
    client.close()


async def test_a_frame_the_kernel_takes_only_part_of_is_finished_in_order(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    frame = bytes(range(256)) * 40_000  # 10 MB: far more than the socket buffers hold
    client, _, out, item = await lent_socket(server, frame, rcvbuf=4096)
    out.write(b"after")
    await writer.submit([item])
    # the writer could not send it all: the rest is queued on the transport, then "after"
    assert not out.lent
    assert out.transport is not None and out.transport.get_write_buffer_size() > 0
    assert await read_exactly(client, len(frame) + 5) == frame + b"after"
    client.close()


async def test_a_socket_that_cannot_be_lent_is_refused(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    client, sink = await connect(server, rcvbuf=4096)
    out = sink.out
    assert out is not None and out.transport is not None
    out.write(bytes(10_000_000))  # more than fits: the transport queues the rest
    assert out.transport.get_write_buffer_size() > 0
    assert out.lend(b"frame") is None  # would overtake the queued bytes
    client.close()


async def test_close_while_lent_waits_for_the_socket(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    client, sink, out, item = await lent_socket(server, b"<frame>")
    out.write(b"<bye>")
    out.close()
    assert not sink.closed.done()
    await writer.submit([item])
    assert await read_exactly(client, 12) == b"<frame><bye>"
    await asyncio.wait_for(sink.closed, 30)  # a bound on a hang, not a figure: loaded CI
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(client, 10), 30) == b""  # then closed
    client.close()


async def test_a_connection_closed_while_lent_is_never_written_under_a_reused_fd(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    client, sink, out, item = await lent_socket(server, b"stale frame")
    fd = out.fd
    assert out.transport is not None
    out.transport.abort()  # the peer reset: the loop closes the fd meanwhile
    await asyncio.wait_for(sink.closed, 5)
    newcomer, new_sink = await connect(server)
    assert new_sink.out is not None
    # the number is in use again (by the newcomer's end in this process)
    assert fd in (newcomer.fileno(), new_sink.out.fd)
    await writer.submit([item])
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):  # nothing reached the newcomer's client end...
        await asyncio.wait_for(loop.sock_recv(newcomer, 100), 0.3)
    assert new_sink.received == b""  # ...nor its server end
    client.close()
    newcomer.close()


class Device:
    """A group member in the gateway's index, written through a SocketLender
    the way gateway/connection.py's `push_group` does."""

    def __init__(self, lender: SocketLender) -> None:
        self.lender = lender

    def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                   handoff: Handoff | None = None) -> bool:
        item = self.lender.lend(payload) if handoff is not None and handoff.lending else None
        if item is None:
            self.lender.write(payload)
        else:
            handoff.lent.append(item)  # type: ignore[union-attr]
        return True


async def test_a_group_fanout_through_the_writer_reaches_every_member_once(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    pairs = [await connect(server) for _ in range(700)]  # more than one chunk
    devices = {f"u{i}": Device(sink.out) for i, (_, sink) in enumerate(pairs) if sink.out}
    fanout = fanout_to(devices, writer=writer)
    message = StoredMessage(conversation_id="g", seq=1, message_id="m1", sender="s",
                            sender_device="d", cid=1, text="hello", sent_at_ms=0)
    fanout.deliver_group("g", list(devices), message)
    frame = wire.group_push_frame("g", [message], 1)
    for client, _ in pairs:
        assert await read_exactly(client, len(frame)) == frame
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    for client, _ in pairs[:50]:  # and only once
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(client, 100), 0.01)
        client.close()
    for client, _ in pairs[50:]:
        client.close()
    assert writer.sockets_written == len(pairs)  # every one through the writer


async def test_the_writer_sends_while_the_event_loop_holds_the_gil(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    """The writer thread takes no GIL: a thread that did would stall the
    event loop whenever it was preempted holding it (it runs at a lower
    priority), and here it could not even start before the loop let go."""
    client, _, out, item = await lent_socket(server, b"written meanwhile")
    done = writer.submit([item])
    before = sys.getswitchinterval()
    sys.setswitchinterval(30.0)  # this thread keeps the GIL while it spins
    try:
        spin_until = time.perf_counter() + 0.5
        while time.perf_counter() < spin_until:
            pass
        # MSG_DONTWAIT: what is already in the client's socket, without waiting
        arrived = client.recv(100, socket.MSG_DONTWAIT)
    finally:
        sys.setswitchinterval(before)
    assert arrived == b"written meanwhile"
    await done
    assert not out.lent
    client.close()


async def test_an_idle_priority_writer_still_writes(
        server: tuple[int, asyncio.Queue[Sink]]) -> None:
    """SCHED_IDLE (`BulkWriter.create(idle=True)`): the thread runs when a core
    would otherwise idle, and on a machine with idle time it writes as usual."""
    idle = BulkWriter.create(idle=True)
    assert idle is not None
    try:
        pairs = [await lent_socket(server, b"idle frame") for _ in range(5)]
        await asyncio.wait_for(idle.submit([item for *_, item in pairs]), 10)
        policies = {os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}
        assert os.SCHED_IDLE in policies  # the writer's thread
        for client, *_ in pairs:
            assert await read_exactly(client, 10) == b"idle frame"
            client.close()
    finally:
        idle.stop()
    assert idle.sockets_written == 5


async def test_stop_sends_what_was_handed_over_and_gives_every_socket_back(
        server: tuple[int, asyncio.Queue[Sink]]) -> None:
    bulk = BulkWriter.create()
    assert bulk is not None
    pairs = [await lent_socket(server, b"last frame") for _ in range(3)]
    done = bulk.submit([item for *_, item in pairs])
    bulk.stop()  # right after: the chunk is sent and given back all the same
    assert done.done()
    for client, _, out, _ in pairs:
        assert not out.lent
        assert await read_exactly(client, 10) == b"last frame"
        client.close()


class Bystander:
    """The owner of a socket that is not a connection's (a socket pair here)."""

    def holds_socket(self) -> bool:
        return True

    def give_back(self, data: bytes, sent: int) -> None:
        pass


def busy_pairs(n: int = 20) -> list[tuple[socket.socket, socket.socket]]:
    """Socket pairs whose senders take a 16 MB frame each: a job to them keeps
    the writer thread copying for tens of ms (SO_SNDBUFFORCE needs root)."""
    pairs = [socket.socketpair() for _ in range(n)]
    for a, _ in pairs:
        try:
            a.setsockopt(socket.SOL_SOCKET, 32, 32 << 20)  # SO_SNDBUFFORCE
        except PermissionError:
            pytest.skip("SO_SNDBUFFORCE needs CAP_NET_ADMIN")
    return pairs


async def test_a_chunk_the_writer_has_not_started_in_time_is_written_by_the_loop(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer runs below the loop's priority; on a saturated machine a
    lent socket would hold back its connection's other writes for as long as
    the writer does not run. A chunk not started after RECLAIM_AFTER_S is
    taken back, and the owners write the frame, then what they held back."""
    client, _, out, item = await lent_socket(server, b"warm")
    await writer.submit([item])  # the thread is up
    assert await read_exactly(client, 4) == b"warm"
    pairs = busy_pairs()
    big = b"x" * (16 << 20)
    busy = writer.submit([Lent(Bystander(), a.fileno(), big) for a, _ in pairs])
    monkeypatch.setattr(bulk, "RECLAIM_AFTER_S", 0.0)
    item = out.lend(b"<frame>")
    assert item is not None
    done = writer.submit([item])  # queued behind the busy job
    out.write(b"<1:1 push>")  # held back while lent
    await asyncio.wait_for(done, 10)
    assert writer.sockets_reclaimed == 1
    assert await read_exactly(client, 17) == b"<frame><1:1 push>"
    assert not busy.done()  # still copying: the chunk behind it was reclaimed, not sent
    await asyncio.wait_for(busy, 10)
    for a, b in pairs:
        a.close()
        b.close()
    client.close()


async def test_returned_waits_for_the_writer_to_give_the_socket_back(
        server: tuple[int, asyncio.Queue[Sink]], writer: BulkWriter) -> None:
    """What a WebSocket close waits for before aiohttp writes its close frame."""
    client, _, out, item = await lent_socket(server, b"<frame>")
    returned = out.returned()
    await asyncio.sleep(0.01)
    assert not returned.done()  # lent, and not handed to the writer yet
    await writer.submit([item])
    assert returned.done() and not out.lent
    assert out.returned().done()  # not lent: at once
    assert await read_exactly(client, 7) == b"<frame>"
    client.close()
