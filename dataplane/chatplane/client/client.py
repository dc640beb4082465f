"""The asyncio client SDK: `Client(url, token)` or
`Client(url, token_provider=fetch)` (client/tokens.py: fresh tokens before expiry).
`url` may be a list of entry URLs, one per region (`Client([url_eu, url_us], token)`):
a connection asks them in order, starting with the one that worked last, and moves to
the next when one's dispatch or every gateway it names fails (docs/sdk.md, failover).

Only I/O lives here: dispatch, links, futures and timers. The protocol and the
delivery rules (login and the resume decision, request ids, pending sends by
cid, batched acks, heartbeats, backoff) are the sans-I/O core in
chatplane.protocol.clientsession, which this module feeds with bytes and the
clock; it sends what the core queues and turns the core's events into
futures, the messages() queue and sync/pull tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_lib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from chatplane.client.links import TLS_TCP, Link, LinkClosed, dispatch, open_link, tls_context
from chatplane.client.social import SocialApi
from chatplane.client.tokens import TokenProvider, TokenSource
from chatplane.protocol import clientsession as core
from chatplane.protocol.clientsession import ACK_DELAY_S, TERMINAL, Ack, Message
from chatplane.protocol.errors import ErrorCode, RequestError
from chatplane.v1 import frames_pb2 as pb

log = logging.getLogger("chatplane.client")

__all__ = ["ACK_DELAY_S", "TERMINAL", "Ack", "Client", "ClientClosed", "Message"]


class ClientClosed(Exception):
    pass


class _Connection:
    """Per-connection I/O state: the link and the requests waiting on it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.waiting: dict[int, asyncio.Future[pb.Frame]] = {}
        self.ended: core.Ended | None = None  # set by a timer: the reader then stops


class Client(SocialApi):
    def __init__(self, url: str | Sequence[str], token: str = "", *,
                 token_provider: TokenProvider | None = None, transport: str = "ws", inbox_seq: int = 0,
                 max_frame_bytes: int = 64 * 1024, heartbeat_s: float | None = None,
                 backoff_max_s: float = 10.0, sync_page: int = 500,
                 http: aiohttp.ClientSession | None = None,
                 resume: dict[str, Any] | None = None, request_timeout_s: float = 30.0,
                 ca: str | None = None, ssl: ssl_lib.SSLContext | None = None) -> None:
        if transport not in ("ws", "tcp"):
            raise ValueError("transport must be 'ws' or 'tcp'")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError("url must be a URL or a non-empty list of URLs")
        self.urls = urls
        self._url_index = 0  # the entry URL that worked last: asked first
        self.tokens = TokenSource(token, token_provider)
        # TLS (https://, wss://, tcps://) always verifies: `ssl` as given, else only
        # `ca` (a PEM file), else the system CAs
        self.tls = ssl if ssl is not None else tls_context(ca)
        self.transport = transport
        self.max_frame_bytes = max_frame_bytes
        self.sync_page = sync_page
        self.request_timeout_s = request_timeout_s
        self.reconnects = 0
        self.requests = 0  # request frames sent (sends not counted)
        self._core = core.ClientSession(inbox_seq=inbox_seq, resume=resume,
                                        max_frame_bytes=max_frame_bytes, heartbeat_s=heartbeat_s,
                                        backoff_max_s=backoff_max_s)
        self._pending: dict[int, asyncio.Future[Ack]] = {}  # cid -> the caller of send_text
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pull_task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._resync = False
        self._runner: asyncio.Task[None] | None = None
        # an app with many clients (a bench) may share one HTTP session
        self._http: aiohttp.ClientSession | None = http
        self._own_http = http is None
        self._closed = False
        self._failure: BaseException | None = None
        self._first_login: asyncio.Future[None] | None = None

    # -- what the core knows -----------------------------------------------------

    @property
    def url(self) -> str:
        """The entry URL the client uses now (the last that worked)."""
        return self.urls[self._url_index]

    @property
    def token(self) -> str:
        """The token the client logs in with (the provider's latest)."""
        return self.tokens.token

    @property
    def inbox_seq(self) -> int:
        """Everything up to here was delivered to messages(); pass it as
        `inbox_seq=` to a new Client to resume without replays."""
        return self._core.cursor.have

    @property
    def user_id(self) -> str:
        return self._core.user_id

    @property
    def device_id(self) -> str:
        return self._core.device_id

    @property
    def inbox_head(self) -> int:
        return self._core.inbox_head

    @property
    def heartbeat_s(self) -> float | None:
        return self._core.heartbeat_s

    @property
    def duplicate_entries(self) -> int:
        """Messages dropped because this device had delivered them already (a second
        inbox entry of one message, or an overlap of its own history pulls)."""
        return self._core.order.duplicates

    @property
    def store_resets(self) -> int:
        """Times the server's history was found behind this device."""
        return self._core.store_resets

    @property
    def send_retries(self) -> int:
        """Sends the server refused with a retriable error (e.g. UNAVAILABLE
        while its storage is down); each is retried with its cid, never acked twice."""
        return self._core.send_retries

    @property
    def last_send_error(self) -> RequestError | None:
        return self._core.last_send_error

    @property
    def max_inflight_sends(self) -> int:
        """LoginAck's bound on sends in flight at once."""
        return self._core.sends.max_inflight

    @property
    def max_users_per_request(self) -> int:  # type: ignore[override]
        """LoginAck's bound on user ids per group request."""
        return self._core.max_users_per_request

    @property
    def _server_max_frame(self) -> int:  # type: ignore[override]
        return self._core.server_max_frame

    def position(self) -> dict[str, Any]:
        """What this device has delivered: store it (JSON) and pass it as
        `resume=` to a later Client of the same device to continue without
        replaying anything (large groups included)."""
        return self._core.position()

    # -- public API ----------------------------------------------------------

    async def connect(self, timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._first_login = loop.create_future()
        self._runner = loop.create_task(self._run())
        try:
            await asyncio.wait_for(asyncio.shield(self._first_login), timeout_s)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.link.close()
        if self._http is not None and self._own_http:
            await self._http.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClientClosed("client closed"))
        self._messages.put_nowait(None)

    async def direct(self, user_id: str) -> str:
        reply = await self._request(pb.Frame(open_direct=pb.OpenDirect(peer_user_id=user_id)))
        return reply.open_direct_ack.conversation_id

    async def send_text(self, conversation_id: str, text: str, *, payload: bytes = b"",
                        content_type: str = "") -> Ack:
        if self._closed:
            raise ClientClosed("client closed")
        loop = asyncio.get_running_loop()
        cid = self._core.send(conversation_id, text, loop.time(), payload=payload,
                              content_type=content_type)
        future: asyncio.Future[Ack] = loop.create_future()
        self._pending[cid] = future
        if self._conn is not None:
            self._process(self._conn)
        return await future

    async def _next_item(self) -> Message | None:
        message = await self._messages.get()
        if message is None:
            self._messages.put_nowait(None)  # every reader ends
            if self._failure is not None:
                raise self._failure
        return message

    async def messages(self) -> AsyncIterator[Message]:
        """Messages of your conversations (group changes included: they are
        timeline entries); friend/read/receipt events are only in events()."""
        while True:
            message = await self._next_item()
            if message is None:
                return
            if not message.conversation_id.startswith("u:"):
                yield message

    async def history(self, conversation_id: str, before_seq: int | None = None,
                      limit: int = 50, after_seq: int | None = None) -> list[Message]:
        reply = await self._request(pb.Frame(history=pb.HistoryRequest(
            conversation_id=conversation_id, before_seq=before_seq or 0,
            after_seq=after_seq or 0, limit=limit)))
        return [Message.from_pb(m) for m in reply.history_response.messages]

    def abort_connection(self) -> None:
        """Cut the current connection abruptly (for tests and chaos drills);
        the client reconnects by itself."""
        if self._conn is not None:
            self._conn.link.abort()

    # -- the core's output -------------------------------------------------------

    def _flush(self, conn: _Connection | None) -> asyncio.Task[None] | None:
        """Send what the core queued, in order (each write starts in the order
        the tasks were made: sends stay in cid order)."""
        task = None
        for payload in self._core.data_to_send():
            if conn is None:
                continue  # lost: the core sends it again on the next connection
            task = asyncio.get_running_loop().create_task(conn.link.send(payload))
            task.add_done_callback(_ignore_result)
        return task

    def _process(self, conn: _Connection | None) -> core.Ended | None:
        """Flush the core's bytes and act on its events; returns how the
        connection ended, if it did."""
        self._flush(conn)
        ended = None
        for event in self._core.events_received():
            if isinstance(event, core.Delivered):
                for message in event.messages:
                    self._messages.put_nowait(message)
            elif isinstance(event, core.Reply):
                future = conn.waiting.pop(event.request_id, None) if conn else None
                if future is not None and not future.done():
                    error = event.error
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(event.frame)
            elif isinstance(event, core.SendDone):
                done = self._pending.pop(event.cid, None)
                if done is not None and not done.done():
                    if event.error is not None:
                        done.set_exception(event.error)
                    else:
                        assert event.ack is not None
                        done.set_result(event.ack)
            elif isinstance(event, core.SyncNeeded):
                self._start_sync()
            elif isinstance(event, core.PullNeeded):
                self._start_pulls()
            elif isinstance(event, core.Ended):
                ended = event
        if conn is not None and conn is self._conn:
            self._arm(conn)
        return ended

    def _arm(self, conn: _Connection) -> None:
        """A timer for the core's next deadline (ack, paused sends, heartbeat)."""
        due = self._core.next_due()
        if due is None or (self._timer is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = asyncio.get_running_loop().call_at(due, self._on_timer, conn)

    def _on_timer(self, conn: _Connection) -> None:
        self._timer = None
        if conn is not self._conn:
            return
        self._core.tick(asyncio.get_running_loop().time())
        ended = self._process(conn)
        if ended is not None:
            conn.ended = ended
            conn.link.abort()  # the reader stops and reports it

    @staticmethod
    def _raise_ended(ended: core.Ended) -> None:
        if ended.error is not None:
            raise ended.error
        raise LinkClosed(ended.reason)

    # -- requests ------------------------------------------------------------

    async def _request(self, frame: pb.Frame, attempts: int = 8,
                       timeout_s: float | None = None) -> pb.Frame:
        """An idempotent request, retried across reconnects and retriable errors,
        for at most `timeout_s` in all (then UNAVAILABLE)."""
        self._core.check_size(frame)
        delay = 0.05
        loop = asyncio.get_running_loop()
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = loop.time() + timeout_s
        for attempt in range(attempts):
            if self._closed:
                raise ClientClosed("client closed")
            try:
                await asyncio.wait_for(self._connected.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise RequestError(int(ErrorCode.UNAVAILABLE),
                                   f"not connected for {timeout_s:.0f} s", True) from None
            _stop_if_cancelled()
            conn = self._conn
            if conn is None:
                continue
            request_id = self._core.request(frame)
            self.requests += 1
            future: asyncio.Future[pb.Frame] = loop.create_future()
            conn.waiting[request_id] = future
            try:
                sent = self._flush(conn)
                if sent is not None:
                    await sent
                reply = await asyncio.wait_for(future, max(0.1, deadline - loop.time()))
                _stop_if_cancelled()
                return reply
            except TimeoutError:
                raise RequestError(int(ErrorCode.UNAVAILABLE),
                                   f"no answer within {timeout_s:.0f} s", True) from None
            except (LinkClosed, ConnectionResetError):
                pass  # reconnecting; try again on the next connection
            except RequestError as exc:
                if not exc.retriable or attempt == attempts - 1:
                    raise
            finally:
                conn.waiting.pop(request_id, None)
                self._core.forget(request_id)
            await asyncio.sleep(delay * random.random())
            delay = min(delay * 2, 2.0)
        raise RequestError(int(ErrorCode.UNAVAILABLE), "gave up after retries", True)

    # -- the connection loop -------------------------------------------------

    async def _run(self) -> None:
        logins = 0
        logins_cured = 0  # fresh tokens fetched since the last accepted login
        loop = asyncio.get_running_loop()
        while not self._closed:
            conn: _Connection | None = None
            try:
                conn = await self._open()
                _stop_if_cancelled()
                logins += 1
                logins_cured = 0
                if logins > 1:
                    self.reconnects += 1
                await self._serve(conn)
            except asyncio.CancelledError:
                raise
            except RequestError as exc:
                if exc.code in TERMINAL and not (logins_cured < 1 and self.tokens.can_cure(exc.code)):
                    self._fail(exc)
                    return
                if exc.code in TERMINAL:  # a fresh token may cure it, once in a row
                    logins_cured += 1
                    try:
                        await self.tokens.refresh()
                    except Exception as failure:  # the app's provider: anything
                        self._fail(failure)
                        return
                    self._core.connection_lost(loop.time())
                    continue
                log.info("connection ended: %s", exc)
            except (ssl_lib.SSLCertVerificationError,
                    aiohttp.ClientConnectorCertificateError) as exc:
                self._fail(exc)  # a server we cannot verify: a retry would not change it
                return
            except (TimeoutError, LinkClosed, OSError, aiohttp.ClientError) as exc:
                log.info("connection ended: %s", exc)
            finally:
                self._connected.clear()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if conn is not None:
                    self._conn = None
                    for future in conn.waiting.values():
                        if not future.done():
                            future.set_exception(LinkClosed("connection lost"))
                    with contextlib.suppress(Exception):
                        await conn.link.close()
            if self._closed:
                return
            await asyncio.sleep(self._core.connection_lost(loop.time()))

    async def _open(self) -> _Connection:
        """A logged-in connection through the entry URLs in order, from the one that
        worked last (several: one per region, so a lost region's clients move on)."""
        failures: list[str] = []
        count = len(self.urls)
        for step in range(count):
            index = (self._url_index + step) % count
            try:
                conn = await self._open_at(self.urls[index])
            except (ssl_lib.SSLCertVerificationError, aiohttp.ClientConnectorCertificateError):
                raise  # a server we cannot verify: not a region that is down
            except (TimeoutError, OSError, aiohttp.ClientError, LinkClosed) as exc:
                if count == 1:
                    raise
                failures.append(f"{self.urls[index]}: {exc}")
                continue
            if index != self._url_index:
                log.info("connected through %s (after %s)", self.urls[index], "; ".join(failures))
            self._url_index = index
            return conn
        raise LinkClosed("no entry URL reachable: " + "; ".join(failures))

    async def _open_at(self, url: str) -> _Connection:
        assert self._http is not None
        endpoints = await dispatch(self._http, url, self.user_id, self.tls)
        last: Exception | None = None
        # another region's gateway (a fallback) may offer only the other transport
        usable = [e for e in endpoints if e.get("tcp" if self.transport == "tcp" else "ws")]
        if not usable and endpoints:
            last = LinkClosed(f"no gateway offers {self.transport}")
        endpoints = usable
        if url.startswith("https://"):  # no downgrade: the token goes to the gateway
            if any(not _is_tls(e, self.transport) for e in endpoints):
                last = LinkClosed("refused a plain-text gateway offered by an https dispatch")
            endpoints = [e for e in endpoints if _is_tls(e, self.transport)]
        for endpoint in endpoints:
            try:
                link = await open_link(self._http, endpoint, self.transport, self.max_frame_bytes,
                                       tls=self.tls)
                break
            except ssl_lib.SSLCertVerificationError:
                raise
            except (TimeoutError, OSError, aiohttp.ClientError, LinkClosed) as exc:
                last = exc
        else:
            raise LinkClosed(f"no gateway reachable: {last}")
        conn = _Connection(link)
        loop = asyncio.get_running_loop()
        try:
            self._core.login(await self.tokens.current(), loop.time())
            for payload in self._core.data_to_send():
                await link.send(payload)
            deadline = loop.time() + 10
            while self._core.phase is core.Phase.LOGGING_IN:
                data = await asyncio.wait_for(link.recv(), max(0.0, deadline - loop.time()))
                self._core.receive(data, loop.time())
            if self._core.phase is not core.Phase.ACTIVE:
                ended = self._process(None)
                self._raise_ended(ended or core.Ended("login not answered"))
        except BaseException:
            # Drop the connection for good: left open, its login could still
            # succeed later and replace (kick) the next, newer connection.
            link.abort()
            raise
        return conn

    async def _serve(self, conn: _Connection) -> None:
        self._conn = conn
        reader = asyncio.get_running_loop().create_task(self._read(conn))
        self._connected.set()
        if self._first_login is not None and not self._first_login.done():
            self._first_login.set_result(None)
        self._process(conn)  # the sends still pending, the sync after the login
        refresh_at = self.tokens.refresh_at()
        try:
            while not reader.done():
                wait = None if refresh_at is None else max(0.0, refresh_at - time.time())
                done, _ = await asyncio.wait({reader}, timeout=wait)
                if done:
                    break
                if refresh_at is not None and time.time() >= refresh_at:
                    if await self._refresh_token():
                        self._core.reconnect_delay_ms = 0
                        raise LinkClosed("token refreshed: logging in again with it")
                    refresh_at = time.time() + 1.0  # the provider failed: again in a second
            reader.result()  # raises what ended the connection
        finally:
            tasks = [t for t in (reader, self._sync_task) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._sync_task = None

    async def _refresh_token(self) -> bool:
        """A fresh token from the provider (the caller then logs in again with
        it, before the old one expires); False when the provider failed."""
        try:
            await self.tokens.refresh()
        except Exception as exc:  # the app's provider: keep the session, try again soon
            log.warning("token_provider failed: %s", exc)
            return False
        return True

    async def _read(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await conn.link.recv()
            except LinkClosed:
                if conn.ended is not None:  # a timer of the core ended it
                    self._raise_ended(conn.ended)
                raise
            self._core.receive(data, loop.time())
            ended = self._process(conn)
            if ended is not None:
                self._raise_ended(ended)

    # -- sync and pulls ----------------------------------------------------------

    def _start_pulls(self) -> None:
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = asyncio.get_running_loop().create_task(self._pull())
            self._pull_task.add_done_callback(_ignore_result)

    async def _pull(self) -> None:
        """Fill per-conversation gaps from history, one conversation at a time."""
        while self._core.order.wants:
            conversation_id, after = next(iter(self._core.order.wants.items()))
            reply = await self._request(pb.Frame(history=pb.HistoryRequest(
                conversation_id=conversation_id, after_seq=after, limit=200)))
            self._core.accept_pulled(conversation_id, reply.history_response.messages)
            self._process(self._conn)

    def _start_sync(self) -> None:
        """Pull the inbox from the cursor; one sync at a time, re-run if
        something new was asked for meanwhile."""
        if self._sync_task is not None and not self._sync_task.done():
            self._resync = True
            return
        self._sync_task = asyncio.get_running_loop().create_task(self._sync())
        self._sync_task.add_done_callback(_ignore_result)

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._resync = False
            order = self._core.order
            cursors = [pb.ConversationCursor(conversation_id=c, seq=order.last[c])
                       for c in order.large if c in order.last]
            reply = await self._request(pb.Frame(sync=pb.SyncRequest(
                after_inbox_seq=self._core.cursor.have, limit=self.sync_page,
                conversations=cursors)))
            response = reply.sync_response
            self._core.accept_sync(response, loop.time())
            self._process(self._conn)
            if not response.has_more and not self._resync and not self._core.cursor.gap:
                return
            if not response.entries:
                await asyncio.sleep(0.05)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._closed = True
        if self._first_login is not None and not self._first_login.done():
            self._first_login.set_exception(exc)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._messages.put_nowait(None)


def _stop_if_cancelled() -> None:
    """Raise CancelledError in a task told to stop. On Python 3.11
    asyncio.wait_for returns the result instead of raising when the cancel
    arrives as the awaited future completes: a sync task cancelled by close()
    then sent its next request on a connection nobody read any more and held
    close() for request_timeout_s (30 s)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _is_tls(endpoint: dict[str, str], transport: str) -> bool:
    if transport == "tcp":
        return endpoint.get("tcp", "").startswith(TLS_TCP)
    return endpoint.get("ws", "").startswith("wss://")


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
