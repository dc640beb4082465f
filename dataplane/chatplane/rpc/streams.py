"""One long-lived gRPC stream per peer carrying tagged batches, in place of a
unary call per batch.

A unary call costs 650-950 µs of CPU counting both sides (docs/benchmarks.md,
"`cluster up`: CPU per message per tier"); a message on an open stream costs
a fraction of that. `Streams` keeps one bidirectional stream per peer address
for one method and sends each batch on it with a `stream_id`; the peer's
`serve` runs the batches side by side, as it would run unary calls, and
answers each with its id when it is done; the answer goes to its caller.
What a caller sees is what the unary call would give it:
- the answer, or an `AioRpcError` with the status the unary call would have
  ended with (the handler raised `BatchFailed`);
- DEADLINE_EXCEEDED after its `timeout_s`; the peer cancels the batch's work
  at that time too (`stream_timeout_ms`), as a unary deadline would;
- UNAVAILABLE when the stream breaks before its answer (the peer died or
  stopped); the next call opens a new stream;
- RESOURCE_EXHAUSTED when `max_queued` batches already wait to be written.
A traced batch carries its caller's traceparent (`stream_trace`): the
stream's own metadata carries only the trace of whoever opened it.
Order between batches is not kept (nor is it between unary calls made side
by side): a caller that owes order waits for one answer before the next.

A stream carries no batch before the peer has accepted it: the serving side
sends its headers with `ACCEPTED` at once, and the writer waits for them. A
peer that ends the stream instead (its status alone, "trailers-only": no such
method, or the caller gate refused it) has then read nothing, and its status
reaches the callers as it is. Writing sooner races that status: grpc aio
replaces the status of a call whose write fails after the peer ended it by
INTERNAL "Internal error from Core" (grpc/grpc#36066), which would turn a
refusal into a broken stream and hide UNIMPLEMENTED from the fallback.

A peer that answers the stream UNIMPLEMENTED (an earlier version, during a
rollout) gets the unary method for `UNARY_FOR_S`, then the stream is tried
again; the batches that stream carried never ran and go unary at once. A new
channel (renewed TLS files, rpc/peers.py) gets a new stream; the old one is
closed once its answers are in.

Bounded: batches waiting to be written per peer (`max_queued`), batches
running per stream on the serving side (`MAX_RUNNING`; then it stops
reading, and HTTP/2 flow control holds the writer), message sizes as the
channel's and the server's (16 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import grpc
from prometheus_client.metrics_core import Metric

from chatplane import metrics, tracing
from chatplane.rpc.peers import Peers

log = logging.getLogger("chatplane.rpc.streams")

MAX_QUEUED = 256  # batches waiting to be written to one peer
MAX_RUNNING = 64  # batches of one stream running at once on the serving side
UNARY_FOR_S = 60.0  # a peer without the stream method: unary calls this long, then try again
CODES = {code.value[0]: code for code in grpc.StatusCode}
# The serving side's headers: the stream was let through and its batches run.
ACCEPTED_KEY = "x-chatplane-stream"
ACCEPTED = ((ACCEPTED_KEY, "accepted"),)
# A stream that ends this way lost its peer: its unanswered batches fail as a
# unary call to a peer that went away does.
BROKEN = frozenset({grpc.StatusCode.OK, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
                    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.ABORTED})


class Asked(Protocol):
    """A batch (a request message with the stream fields, services.proto)."""

    stream_id: int
    stream_timeout_ms: int
    stream_trace: str


class Answered(Protocol):
    """A batch's answer (a reply message with the stream fields)."""

    stream_id: int
    stream_code: int
    stream_details: str


Q = TypeVar("Q", bound=Asked)
A = TypeVar("A", bound=Answered)
S = TypeVar("S")


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a unary call that ended with `code` raises."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class BatchFailed(Exception):
    """Raised by a batch's handler: the status its unary call ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Unimplemented(Exception):
    """The peer has no such stream: the batch never ran."""


class _Link(Generic[Q, A]):
    """One open stream to one peer."""

    def __init__(self, call: Any, channel: grpc.aio.Channel) -> None:
        self.call = call
        self.channel = channel
        self.queue: deque[tuple[int, Q, asyncio.Future[A]]] = deque()
        self.waiting: dict[int, asyncio.Future[A]] = {}
        self.wake = asyncio.Event()
        self.closing = False  # a newer channel: write what is queued, then half-close
        self.broken = False
        self.task: asyncio.Task[None] | None = None


class Streams(Generic[Q, A, S]):
    """Batches of one method to any peer, on one stream per peer address.
    `kind` makes the stub (e.g. `ImStub`); `stream` and `unary` pick the
    stream method and its unary twin from it."""

    def __init__(self, peers: Peers, dials: str, name: str,
                 kind: Callable[[grpc.aio.Channel], S],
                 stream: Callable[[S], Any], unary: Callable[[S], Any], *,
                 max_queued: int = MAX_QUEUED) -> None:
        self.peers = peers
        self.dials = dials
        self.name = name
        self.kind = kind
        self.stream = stream
        self.unary = unary
        self.max_queued = max_queued
        self._links: dict[str, _Link[Q, A]] = {}
        self._old: set[asyncio.Task[None]] = set()  # streams of retired channels, finishing
        self._unary_until: dict[str, float] = {}
        self._next_id = 0
        self.batches = 0  # sent on a stream
        self.unary_calls = 0  # sent as unary calls (a peer without the stream)
        self.opened = 0
        self.broken = 0

    async def call(self, address: str, request: Q, timeout_s: float) -> A:
        """`request` to the peer at `address`: its answer, or the AioRpcError
        of the unary call (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        if self._unary_until.get(address, 0.0) > loop.time():
            return await self._unary(address, request, timeout_s)
        started = loop.time()
        link = self._link(address)
        if len(link.queue) >= self.max_queued:
            raise rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"{self.name}: {len(link.queue)} batches wait for {address}")
        self._next_id += 1
        stream_id = request.stream_id = self._next_id
        request.stream_timeout_ms = max(1, int(timeout_s * 1000))
        if tracing.enabled():  # (the stream's metadata carries its opener's trace only)
            request.stream_trace = tracing.carrier()
        future: asyncio.Future[A] = loop.create_future()
        link.queue.append((stream_id, request, future))
        link.waiting[stream_id] = future
        link.wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            link.waiting.pop(stream_id, None)
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"{self.name}: no answer in {timeout_s:.3f} s") from None
        except _Unimplemented:
            if self._unary_until.get(address, 0.0) <= loop.time():
                log.info("%s: %s has no stream method; unary calls for %.0f s",
                         self.name, address, UNARY_FOR_S)
            self._unary_until[address] = loop.time() + UNARY_FOR_S
            return await self._unary(address, request,
                                     max(0.001, timeout_s - (loop.time() - started)))

    async def _unary(self, address: str, request: Q, timeout_s: float) -> A:
        request.stream_id = 0
        request.stream_timeout_ms = 0
        request.stream_trace = ""
        self.unary_calls += 1
        method = self.unary(self.peers.stub(address, self.dials, self.kind))
        answer: A = await method(request, timeout=timeout_s)
        return answer

    def _link(self, address: str) -> _Link[Q, A]:
        """The open stream to `address`, or a new one."""
        channel = self.peers.channel(address, self.dials)
        link = self._links.get(address)
        if link is not None and not link.broken:
            if link.channel is channel:
                return link
            link.closing = True  # a renewed channel: this one finishes what it carries
            link.wake.set()
            if link.task is not None:
                self._old.add(link.task)
                link.task.add_done_callback(self._old.discard)
        call = self.stream(self.peers.stub(address, self.dials, self.kind))(
            metadata=self.peers.security.call_metadata() or None)
        link = self._links[address] = _Link(call, channel)
        link.task = asyncio.get_running_loop().create_task(self._run(address, link),
                                                           name=f"{self.name} {address}")
        self.opened += 1
        return link

    async def _run(self, address: str, link: _Link[Q, A]) -> None:
        """Write the queued batches, read the answers; at the end, fail what
        is left as the stream ended (logged: nothing ends silently)."""
        writer = asyncio.get_running_loop().create_task(self._write(link))
        error: BaseException
        try:
            while True:
                answer = await link.call.read()
                if answer is grpc.aio.EOF:
                    error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"{self.name}: stream ended")
                    break
                future = link.waiting.pop(answer.stream_id, None)
                if future is None or future.done():
                    continue  # its caller left
                if answer.stream_code:
                    future.set_exception(rpc_error(
                        CODES.get(answer.stream_code, grpc.StatusCode.UNKNOWN),
                        answer.stream_details))
                else:
                    future.set_result(answer)
        except grpc.aio.AioRpcError as exc:
            error = self._ended(address, exc)
        except asyncio.CancelledError:
            if link.call.cancelled() and not _cancelling():  # the writer gave up on it
                error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"{self.name}: stream cancelled")
            else:
                self._fail(link, rpc_error(grpc.StatusCode.CANCELLED, f"{self.name}: closed"))
                raise
        except Exception as exc:  # a bug: logged, and the callers get a failure
            log.exception("%s stream to %s failed", self.name, address)
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, f"{self.name}: {exc!r}")
        finally:
            link.broken = True
            if self._links.get(address) is link:  # (a peer gone for good leaves nothing)
                del self._links[address]
            writer.cancel()
            if not link.call.done():
                link.call.cancel()
        self._fail(link, error)

    def _ended(self, address: str, exc: grpc.aio.AioRpcError) -> BaseException:
        code = exc.code()
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return _Unimplemented()
        self.broken += 1
        log.info("%s stream to %s ended: %s %s", self.name, address, code.name, exc.details())
        if code in BROKEN:
            return rpc_error(grpc.StatusCode.UNAVAILABLE,
                             f"{self.name}: stream ended ({code.name}: {exc.details()})")
        return exc

    @staticmethod
    def _fail(link: _Link[Q, A], error: BaseException) -> None:
        for future in [*link.waiting.values(), *(f for _, _, f in link.queue)]:
            if not future.done():
                future.set_exception(error)
                future.exception()  # (a caller that left does not read it)
        link.waiting.clear()
        link.queue.clear()

    async def _write(self, link: _Link[Q, A]) -> None:
        """The one writer of a stream (gRPC allows one write at a time); it
        writes once the peer has accepted the stream (see the module's docstring)."""
        try:
            headers = await link.call.initial_metadata()
            if not any(key == ACCEPTED_KEY for key, _ in headers or ()):
                return  # ended by the peer's status alone: the reader reads it
            while True:
                await link.wake.wait()
                link.wake.clear()
                while link.queue:
                    stream_id, request, future = link.queue.popleft()
                    if future.done():  # its caller left before it was written
                        link.waiting.pop(stream_id, None)
                        continue
                    await link.call.write(request)
                    self.batches += 1
                if link.closing:
                    await link.call.done_writing()
                    return
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the stream ended: the reader reads why and fails the callers
        except Exception:
            log.exception("%s: writing to a stream failed", self.name)
            link.call.cancel()  # the reader fails the callers

    def families(self, prefix: str) -> Iterator[Metric]:
        """Counters of this method's batches and streams, named `prefix`_..."""
        yield metrics.counter(f"{prefix}_stream_batches_total",
                              f"{self.name} batches sent on a stream", self.batches)
        yield metrics.counter(f"{prefix}_unary_calls_total",
                              f"{self.name} batches sent as unary calls (a peer without the "
                              "stream method)", self.unary_calls)
        yield metrics.counter(f"{prefix}_streams_opened_total",
                              f"{self.name} streams opened", self.opened)
        yield metrics.counter(f"{prefix}_streams_broken_total",
                              f"{self.name} streams that ended with a failure", self.broken)

    async def close(self) -> None:
        tasks = [link.task for link in self._links.values() if link.task is not None]
        tasks += list(self._old)
        self._links = {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def answer_unary(context: grpc.aio.ServicerContext, handle: Callable[[Q], Awaitable[A]],
                       request: Q) -> A:
    """A batch as a unary call: `BatchFailed` ends the call with its status."""
    try:
        return await handle(request)
    except BatchFailed as exc:
        await context.abort(exc.code, exc.details)
        raise


async def serve(requests: AsyncIterator[Q], context: grpc.aio.ServicerContext,
                handle: Callable[[Q], Awaitable[A]], blank: Callable[[], A], *,
                running: int = MAX_RUNNING) -> AsyncGenerator[A, None]:
    """The serving side of a stream: accepted at once (`ACCEPTED`, the
    headers the caller waits for), then each batch run by `handle` side by
    side (at most `running` at once), each answered with its `stream_id` when
    done; `blank()` makes an answer that carries a failure's status only. The
    servicer's method yields what this yields (an async generator, as gRPC
    and its tracing interceptor expect of a streaming handler): `serving`."""
    await context.send_initial_metadata(ACCEPTED)
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(running)
    answers: asyncio.Queue[A | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    async def one(request: Q) -> None:
        timeout_s = request.stream_timeout_ms / 1000 if request.stream_timeout_ms else None
        try:
            with tracing.continued(request.stream_trace):
                async with asyncio.timeout(timeout_s):
                    answer = await handle(request)
        except BatchFailed as exc:
            answer = _status(blank(), exc.code, exc.details)
        except TimeoutError:
            answer = _status(blank(), grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        except Exception as exc:  # a bug: UNKNOWN, as gRPC ends a unary call, and logged
            log.exception("a batch failed")
            answer = _status(blank(), grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
        answer.stream_id = request.stream_id
        answers.put_nowait(answer)

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                task = loop.create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:  # the caller half-closed: answer what runs
                await asyncio.wait(list(tasks))
        finally:
            answers.put_nowait(None)

    reader = loop.create_task(read())
    try:
        while (answer := await answers.get()) is not None:
            yield answer
            slots.release()
        await reader
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()


def _status(answer: A, code: grpc.StatusCode, details: str) -> A:
    answer.stream_code = code.value[0]
    answer.stream_details = details
    return answer



def serving(requests: AsyncIterator[Q], context: grpc.aio.ServicerContext,
            handle: Callable[[Q], Awaitable[A]],
            blank: Callable[[], A]) -> contextlib.aclosing[AsyncGenerator[A, None]]:
    """`serve`'s answers, for a servicer's stream method to yield
    (`async with serving(requests, context, ...) as answers: async for a in
    answers: yield a`):
    closed with the stream whichever way it ends, which cancels its batches'
    work, as a unary call's is cancelled."""
    return contextlib.aclosing(serve(requests, context, handle, blank))
