"""Large-group frames written by a thread of their own, outside the GIL.

A flush to 10,000 members is 10,000 `send` calls of the same bytes, and on
the event loop that was 130-165 ms of CPU per flush, most of it the kernel's
send: every 1:1 message waited behind it (issue 6). Here the event loop only
lends each member's socket, while nothing else is queued on it, and one
`BulkWriter` thread, written in C and never taking the GIL
(`chatplane._sendeach.Writer`), writes the frame to a chunk of lent sockets
at a lower scheduling priority than the event loop (nice 5: the measured
trade between 1:1 latency beside a busy group and the group's own, in
docs/large-groups.md), so the loop goes on serving everyone else meanwhile, on the other core when
there is one.
`Handoff` pipelines a fan-out: the writer sends one chunk while the loop
lends the next.

Lending keeps each connection's byte stream whole: while lent, whatever the
connection writes is held back; on return the part of the frame the kernel
did not take (a full socket buffer) goes first, then what was held back, in
order, through the connection's own transport. The writer writes to a dup
of the fd, taken on the loop while the connection's transport is still
open, and closes it after its send: a connection closed meanwhile can never
have its fd number, reused by a newcomer, written to.

Without the compiled module (no C compiler at install) `BulkWriter.create`
returns None and the event loop writes the frames itself, as before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import NamedTuple, Protocol

from chatplane.slicing import TimeSlice

log = logging.getLogger("chatplane.gateway.bulk")

try:
    from chatplane import _sendeach
except ImportError:  # built by `pip install` when a C compiler is there
    _sendeach = None  # type: ignore[assignment]

CHUNK = 512  # sockets per hand-off: ~5 ms of sends
# A chunk the writer has not started this long after its hand-off is taken
# back and written by the event loop: the writer runs below the loop's
# priority, so on a saturated machine it may not run for a while, and a lent
# socket holds back everything else its connection writes (1:1 pushes too).
RECLAIM_AFTER_S = 0.05


class Lender(Protocol):
    def holds_socket(self) -> bool:
        """Lent, and its fd is still the connection's (not closed yet)."""

    def give_back(self, data: bytes, sent: int) -> None:
        """The writer is done with the lent socket: it took `sent` bytes of
        `data` (-errno when it failed)."""


class Lent(NamedTuple):
    owner: Lender
    fd: int  # the socket's fd (the writer writes to a dup of it, which it closes)
    data: bytes  # the framed bytes to write


# Lent(...) runs a Python-level __new__; 10,000 lends per flush make it count
_new_lent = tuple.__new__


def failed(sent: int) -> bool:
    """The writer's result for a socket says the socket is dead (not merely full)."""
    return sent < 0 and -sent not in (errno.EAGAIN, errno.EWOULDBLOCK)


def remainder(data: bytes, sent: int) -> bytes | None:
    """What the owner must still write after a lent write, or None when the
    socket failed (the connection is dead; it is closed)."""
    if failed(sent):
        return None
    return data[max(sent, 0):] if sent < len(data) else b""


class _Chunk:
    """Lent sockets handed to the writer together (one `submit`): given back
    once every job of it (one per distinct frame) was sent."""

    __slots__ = ("cpu", "done", "jobs", "lent", "pending", "reclaim", "results")

    def __init__(self, lent: list[Lent], done: asyncio.Future[float]) -> None:
        self.lent = lent
        self.done = done
        self.results = [0] * len(lent)  # a socket not written: its owner writes the whole frame
        self.pending = 0
        self.jobs: list[int] = []
        self.reclaim: asyncio.TimerHandle | None = None
        self.cpu = 0.0


class BulkWriter:
    """One thread writing shared frames to lent sockets. `submit` hands it a
    chunk; its future resolves when every socket of it was given back.

    The thread is C (`chatplane._sendeach.Writer`) and never takes the GIL:
    it runs below the event loop's priority (`nice`, or SCHED_IDLE with
    `idle`: only when a core would otherwise be idle), and a thread like that
    must not hold the GIL when it is preempted, or the event loop waits for
    it. Finished jobs come back through an eventfd the loop watches."""

    def __init__(self, *, nice: int = 5, idle: bool = False) -> None:
        self.nice = nice
        self.idle = idle
        self._writer: _sendeach.Writer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[int, tuple[_Chunk, list[int]]] = {}
        self.sockets_written = 0
        self.sockets_failed = 0
        self.sockets_reclaimed = 0
        self._warned = False

    @classmethod
    def create(cls, *, nice: int = 5, idle: bool = False) -> BulkWriter | None:
        """A writer, or None without the compiled module."""
        return cls(nice=nice, idle=idle) if _sendeach is not None else None

    def _started(self) -> _sendeach.Writer:
        loop = asyncio.get_running_loop()
        if self._writer is None:
            assert _sendeach is not None
            self._writer = _sendeach.Writer(nice=self.nice, idle=self.idle)
            self._loop = loop
            loop.add_reader(self._writer.fileno(), self._collect)
        return self._writer

    def stop(self) -> None:
        """Stop the thread once what it was given is sent; every socket is
        given back (call it on the loop)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(writer.fileno())
        writer.close()
        self._collect(writer)

    def submit(self, lent: list[Lent]) -> asyncio.Future[float]:
        """Hand a chunk of lent sockets to the writer thread. Call it in the
        same stretch of the event loop as the `lend`s (each fd is duplicated
        here, before anything else runs and could close it). Every socket is
        given back on the loop before the returned future resolves (to the
        writer thread's CPU seconds for the chunk), whoever waits for it."""
        writer = self._started()
        loop = asyncio.get_running_loop()
        chunk = _Chunk(lent, loop.create_future())
        # one job per distinct frame (TCP and WebSocket frame it differently);
        # a connection closed since its lend may have had its fd number
        # reused: never write that one
        frames: dict[int, tuple[bytes, list[int], list[int]]] = {}
        for i, item in enumerate(lent):
            if not item.owner.holds_socket():
                continue
            frame = frames.get(id(item.data))
            if frame is None:
                frame = frames[id(item.data)] = (item.data, [], [])
            frame[1].append(item.fd)
            frame[2].append(i)
        for data, fds, where in frames.values():
            try:
                job = writer.submit(fds, data)
            except (OSError, MemoryError, RuntimeError):  # never keep sockets lent: owners write
                log.exception("group writer: a chunk could not be handed over")
                continue
            self._jobs[job] = (chunk, where)
            chunk.jobs.append(job)
            chunk.pending += 1
        if chunk.pending:
            chunk.reclaim = loop.call_later(RECLAIM_AFTER_S, self._reclaim, chunk)
        else:
            self._give_back(chunk)
        return chunk.done

    def _reclaim(self, chunk: _Chunk) -> None:
        """The writer has not got to (part of) this chunk in time: what it has
        not started comes back unwritten, and the owners write it."""
        chunk.reclaim = None
        if self._writer is None:
            return
        for job in chunk.jobs:
            if job in self._jobs and self._writer.cancel(job):
                self.sockets_reclaimed += len(self._jobs[job][1])

    def _collect(self, writer: _sendeach.Writer | None = None) -> None:
        """The writer's finished jobs (its eventfd is readable)."""
        writer = writer or self._writer
        if writer is None:
            return
        if writer.priority_failed and not self._warned:
            self._warned = True
            log.warning("group writer: could not lower its priority (%s)",
                        "SCHED_IDLE" if self.idle else f"nice {self.nice}")
        for job, sent, cpu in writer.take():
            chunk, where = self._jobs.pop(job)
            for i, n in zip(where, sent, strict=True):
                chunk.results[i] = n
            chunk.cpu += cpu
            chunk.pending -= 1
            if not chunk.pending:
                self._give_back(chunk)

    def _give_back(self, chunk: _Chunk) -> None:
        if chunk.reclaim is not None:
            chunk.reclaim.cancel()
        for item, sent in zip(chunk.lent, chunk.results, strict=True):
            if failed(sent):
                self.sockets_failed += 1
            try:
                item.owner.give_back(item.data, sent)
            except Exception:  # one connection must not keep the others lent
                log.exception("group writer: giving a socket back failed")
        self.sockets_written += len(chunk.lent)
        if not chunk.done.done():
            chunk.done.set_result(chunk.cpu)


class Handoff:
    """One fan-out's frames, lent sockets handed to the writer a chunk at a
    time: the writer sends one chunk while the loop lends the next. A loop
    over members gives it to each link's `push_raw`, calls `step` where it
    would look at its time slice, and `finish`es; at every pause nothing is
    left lent and not handed off (a lent socket must reach the writer before
    the loop runs anything that could close it). With no writer, links
    write themselves and `step` only pauses."""

    __slots__ = ("clock", "in_flight", "lending", "lent", "writer")

    def __init__(self, writer: BulkWriter | None, clock: TimeSlice) -> None:
        self.writer = writer
        self.lending = writer is not None
        self.clock = clock
        self.lent: list[Lent] = []  # links append theirs (a call per member costs)
        self.in_flight: asyncio.Future[float] | None = None

    async def step(self) -> None:
        """Hand off a full chunk (or what there is once the slice is used
        up); waiting for the chunk before is the loop's pause. Else pause
        when the slice is used up."""
        if self.lent and (len(self.lent) >= CHUNK or self.clock.over()):
            await self._hand_off()
        elif self.clock.over():
            await self.clock.pause()

    async def finish(self) -> None:
        if self.lent:
            await self._hand_off()
        await self._wait()

    async def _hand_off(self) -> None:
        assert self.writer is not None
        chunk, self.lent = self.writer.submit(self.lent), []
        await self._wait()
        self.in_flight = chunk

    async def _wait(self) -> None:
        if self.in_flight is not None:
            chunk, self.in_flight = self.in_flight, None
            self.clock.spent_elsewhere(await self.clock.wait(chunk))


class SocketLender:
    """The writing end of one connection: writes through its transport, or
    lends the socket to the `BulkWriter` while nothing is queued on it and
    holds back what the connection writes until the socket is given back."""

    __slots__ = ("_close_on_return", "_held", "_waiter", "fd", "max_buffer", "transport")

    def __init__(self, transport: asyncio.Transport, max_buffer: int) -> None:
        self.transport: asyncio.Transport | None = transport
        sock = transport.get_extra_info("socket")
        # never lend a TLS connection: bytes written to its socket would skip the encryption
        plain = transport.get_extra_info("sslcontext") is None
        self.fd = sock.fileno() if sock is not None and plain else -1
        self.max_buffer = max_buffer  # a peer that lets this much pile up is dropped
        self._held: list[bytes] | None = None  # None: not lent
        self._close_on_return = False
        self._waiter: asyncio.Future[None] | None = None  # see `returned`

    @property
    def lent(self) -> bool:
        return self._held is not None

    def holds_socket(self) -> bool:
        # the loop closes a transport's fd only after it is closing
        transport = self.transport
        return self._held is not None and transport is not None and not transport.is_closing()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._held is not None:
            self._held.append(data)
            return
        self._write_through(transport, data)

    def _write_through(self, transport: asyncio.Transport, data: bytes) -> bool:
        """False when the peer let too much pile up and was dropped."""
        transport.write(data)
        if transport.get_write_buffer_size() > self.max_buffer:
            transport.abort()
            return False
        return True

    def lend(self, data: bytes) -> Lent | None:
        """The socket, to write `data` to, when nothing is queued on it;
        None when it cannot be lent now (write `data` instead)."""
        transport = self.transport
        if (transport is None or transport.is_closing() or self._held is not None
                or self.fd < 0 or transport.get_write_buffer_size()):
            return None
        self._held = []
        return _new_lent(Lent, (self, self.fd, data))

    def returned(self) -> asyncio.Future[None]:
        """Done once the socket is not lent (at once when it is not): for
        writes made by someone else than this lender, like aiohttp's close
        frame, which must not land in the middle of the writer's."""
        if self._held is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def give_back(self, data: bytes, sent: int) -> None:
        held, self._held = self._held, None
        if sent == len(data) and not held and not self._close_on_return and self._waiter is None:
            return  # the common case: all of it went, nothing waits
        try:
            self._finish(data, sent, held)
        finally:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _finish(self, data: bytes, sent: int, held: list[bytes] | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        rest = remainder(data, sent)
        if rest is None:  # the socket failed under the writer: the connection is dead
            transport.abort()
            return
        if (rest or held) and not self._write_through(transport, rest + b"".join(held or ())):
            return
        if self._close_on_return:
            transport.close()

    def close(self) -> None:
        """Flush what is queued, then close (once given back, when lent)."""
        if self._held is not None:
            self._close_on_return = True
        elif self.transport is not None:
            self.transport.close()

    def lost(self) -> None:
        """The transport is gone (either side closed it)."""
        self.transport = None

