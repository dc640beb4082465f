"""The asyncio client SDK: `Client(url, token)` or
`Client(url, token_provider=fetch)` (client/tokens.py: fresh tokens before expiry).

The client keeps what must survive a reconnect — its inbox cursor, the sends
not yet acked (with their cids) — and rebuilds everything else per connection:
dispatch, connect, login with the cursor, sync the delta, resend what is
pending, then live pushes. The delivery rules themselves are in
chatplane.delivery (cursor, cids); this module only does I/O around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_lib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from chatplane.client.links import TLS_TCP, Link, LinkClosed, dispatch, open_link, tls_context
from chatplane.client.social import SocialApi
from chatplane.client.tokens import TokenProvider, TokenSource
from chatplane.delivery.dedup import CidAllocator
from chatplane.delivery.sync import ConversationOrder, InboxCursor
from chatplane.protocol import wire
from chatplane.protocol.errors import ErrorCode, RequestError
from chatplane.v1 import frames_pb2 as pb

log = logging.getLogger("chatplane.client")

# How long the client gathers pushes before it acks them (one ack for all).
ACK_DELAY_S = 0.01

# Errors after which reconnecting cannot help.
TERMINAL = {ErrorCode.AUTH_FAILED, ErrorCode.TOKEN_EXPIRED, ErrorCode.SESSION_REPLACED,
            ErrorCode.UNSUPPORTED_VERSION, ErrorCode.TOKEN_REVOKED}


@dataclass(frozen=True, slots=True)
class Message:
    conversation_id: str
    seq: int
    inbox_seq: int
    message_id: str
    sender: str
    sender_device: str
    text: str
    sent_at_ms: int
    cid: int = 0
    payload: bytes = b""
    content_type: str = "text"

    @property
    def sent_at(self) -> datetime:
        """When the server stored it (UTC)."""
        return datetime.fromtimestamp(self.sent_at_ms / 1000, tz=UTC)

    @classmethod
    def from_pb(cls, m: pb.Message, inbox_seq: int = 0) -> Message:
        return cls(m.conversation_id, m.seq, inbox_seq, m.message_id, m.sender, m.sender_device,
                   m.text, m.sent_at_ms, m.cid, m.payload, m.content_type or "text")


@dataclass(frozen=True, slots=True)
class Ack:
    conversation_id: str
    seq: int
    message_id: str
    cid: int
    duplicate: bool = False


class ClientClosed(Exception):
    pass


class _Connection:
    """Per-connection state: the link and the requests waiting on it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.waiting: dict[int, asyncio.Future[pb.Frame]] = {}
        self.last_frame = time.monotonic()
        self.reconnect_delay_ms: int | None = None


class Client(SocialApi):
    def __init__(self, url: str, token: str = "", *, token_provider: TokenProvider | None = None,
                 transport: str = "ws", inbox_seq: int = 0,
                 max_frame_bytes: int = 64 * 1024, heartbeat_s: float | None = None,
                 backoff_max_s: float = 10.0, sync_page: int = 500,
                 http: aiohttp.ClientSession | None = None,
                 resume: dict[str, Any] | None = None, request_timeout_s: float = 30.0,
                 ca: str | None = None, ssl: ssl_lib.SSLContext | None = None) -> None:
        if transport not in ("ws", "tcp"):
            raise ValueError("transport must be 'ws' or 'tcp'")
        self.url = url
        self.tokens = TokenSource(token, token_provider)
        # TLS (https://, wss://, tcps://) always verifies: `ssl` as given, else only
        # `ca` (a PEM file), else the system CAs
        self.tls = ssl if ssl is not None else tls_context(ca)
        self.transport = transport
        self.max_frame_bytes = max_frame_bytes
        self.heartbeat_s = heartbeat_s
        self.backoff_max_s = backoff_max_s
        self.sync_page = sync_page
        self.user_id = ""
        self.device_id = ""
        self.inbox_head = 0
        self.reconnects = 0
        self.requests = 0  # request frames sent (sends not counted)
        self._cursor: InboxCursor[Message] = InboxCursor(inbox_seq)
        self._order: ConversationOrder[Message] = ConversationOrder()
        self._store_id = ""  # the server store the cursor counts in (LoginAck.store_id)
        if resume:  # what position() returned before: continue without replays
            self._store_id = str(resume.get("store_id", ""))
            self._cursor = InboxCursor(int(resume.get("inbox_seq", inbox_seq)))
            self._order.last.update({c: int(s) for c, s in resume.get("conversations", {}).items()})
            self._order.large.update(resume.get("large", ()))
        self._pull_task: asyncio.Task[None] | None = None
        self._cids = CidAllocator()
        self._pending: dict[int, tuple[pb.Send, asyncio.Future[Ack]]] = {}
        self._messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self._conn: _Connection | None = None
        self._connected = asyncio.Event()
        self._next_id = 0
        self._acked_sent = 0
        self._server_max_frame = max_frame_bytes
        # LoginAck's bounds: sends in flight at once, user ids per group request
        self.max_inflight_sends = 128
        self.max_users_per_request = 1000
        self._inflight: set[int] = set()  # cids sent on this connection, not answered
        self._send_pause: asyncio.TimerHandle | None = None  # after a refused send
        self.request_timeout_s = request_timeout_s
        self.store_resets = 0  # times the server's history was found behind this device
        # sends the server refused with a retriable error (e.g. UNAVAILABLE while
        # its storage is down); each is retried with its cid, never acked twice
        self.send_retries = 0
        self.last_send_error: RequestError | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._resync = False
        self._runner: asyncio.Task[None] | None = None
        # an app with many clients (a bench) may share one HTTP session
        self._http: aiohttp.ClientSession | None = http
        self._own_http = http is None
        self._closed = False
        self._failure: BaseException | None = None
        self._first_login: asyncio.Future[None] | None = None

    # -- public API ----------------------------------------------------------

    @property
    def token(self) -> str:
        """The token the client logs in with (the provider's latest)."""
        return self.tokens.token

    @property
    def inbox_seq(self) -> int:
        """Everything up to here was delivered to messages(); pass it as
        `inbox_seq=` to a new Client to resume without replays."""
        return self._cursor.have

    def position(self) -> dict[str, Any]:
        """What this device has delivered: store it (JSON) and pass it as
        `resume=` to a later Client of the same device to continue without
        replaying anything (large groups included)."""
        return {"store_id": self._store_id, "inbox_seq": self._cursor.have,
                "conversations": dict(self._order.last),
                "large": sorted(self._order.large)}

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
        for _, future in self._pending.values():
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
        cid = self._cids.next()
        body = pb.Send(conversation_id=conversation_id, cid=cid, text=text, payload=payload,
                       content_type=content_type)
        # refused here: queued, it would be resent (and refused) forever
        self._check_size(pb.Frame(id=2**63, send=body))
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[cid] = (body, future)
        self._pump_sends()
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

    # -- requests ------------------------------------------------------------

    def _check_size(self, frame: pb.Frame) -> None:
        """FRAME_TOO_LARGE here, for a frame the server would refuse (and
        close the connection for): a retry cannot fix it, so it is never sent."""
        size = frame.ByteSize() + 11  # room for any request id
        if size > self._server_max_frame:
            raise RequestError(int(ErrorCode.FRAME_TOO_LARGE),
                               f"request of {size} bytes over the server's "
                               f"{self._server_max_frame}-byte frame limit; not sent")

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def _request(self, frame: pb.Frame, attempts: int = 8,
                       timeout_s: float | None = None) -> pb.Frame:
        """An idempotent request, retried across reconnects and retriable errors,
        for at most `timeout_s` in all (then UNAVAILABLE)."""
        self._check_size(frame)
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
            frame.id = self._new_id()
            self.requests += 1
            future: asyncio.Future[pb.Frame] = asyncio.get_running_loop().create_future()
            conn.waiting[frame.id] = future
            try:
                await conn.link.send(frame.SerializeToString())
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
                conn.waiting.pop(frame.id, None)
            await asyncio.sleep(delay * random.random())
            delay = min(delay * 2, 2.0)
        raise RequestError(int(ErrorCode.UNAVAILABLE), "gave up after retries", True)

    def _pump_sends(self) -> None:
        """Send what is pending, in cid order, up to max_inflight_sends in
        flight; nothing while paused after a refusal (the server takes sends
        again from the refused cid: gateway/pacing.py)."""
        conn = self._conn
        if conn is None or not self._connected.is_set() or self._send_pause is not None:
            return
        for cid in self._pending:  # insertion order is cid order
            if len(self._inflight) >= self.max_inflight_sends:
                return
            if cid not in self._inflight:
                self._transmit_send(conn, cid)

    def _resume_sends(self) -> None:
        self._send_pause = None
        self._pump_sends()

    def _transmit_send(self, conn: _Connection, cid: int) -> None:
        self._inflight.add(cid)
        body, _ = self._pending[cid]
        request_id = self._new_id()
        reply: asyncio.Future[pb.Frame] = asyncio.get_running_loop().create_future()
        conn.waiting[request_id] = reply
        reply.add_done_callback(lambda r: self._on_send_reply(conn, cid, request_id, r))
        frame = pb.Frame(id=request_id, send=body)
        task = asyncio.get_running_loop().create_task(conn.link.send(frame.SerializeToString()))
        task.add_done_callback(_ignore_result)

    def _on_send_reply(self, conn: _Connection, cid: int, request_id: int,
                       reply: asyncio.Future[pb.Frame]) -> None:
        conn.waiting.pop(request_id, None)
        if conn is not self._conn:
            return  # an old connection's: every pending send goes again on the new one
        self._inflight.discard(cid)
        entry = self._pending.get(cid)
        if entry is None or reply.cancelled():
            self._pump_sends()
            return
        _, future = entry
        exc = reply.exception()
        if exc is None:
            ack = reply.result().send_ack
            del self._pending[cid]
            if not future.done():
                future.set_result(Ack(ack.conversation_id, ack.seq, ack.message_id, ack.cid,
                                      ack.duplicate))
        elif isinstance(exc, RequestError) and not exc.retriable:
            del self._pending[cid]
            if not future.done():
                future.set_exception(exc)
        elif isinstance(exc, RequestError):  # retriable: same cid, in order, a little later
            self.send_retries += 1
            self.last_send_error = exc
            if self._send_pause is None:
                self._send_pause = asyncio.get_running_loop().call_later(
                    0.05 + random.random() * 0.2, self._resume_sends)
            return
        # LinkClosed: the resend happens after the next login
        self._pump_sends()

    # -- the connection loop -------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        logins = 0
        logins_cured = 0  # fresh tokens fetched since the last accepted login
        while not self._closed:
            conn: _Connection | None = None
            up_since = 0.0
            try:
                conn = await self._open()
                _stop_if_cancelled()
                logins += 1
                logins_cured = 0
                if logins > 1:
                    self.reconnects += 1
                up_since = time.monotonic()
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
                if conn is not None:
                    self._conn = None
                    for future in conn.waiting.values():
                        if not future.done():
                            future.set_exception(LinkClosed("connection lost"))
                    with contextlib.suppress(Exception):
                        await conn.link.close()
            if self._closed:
                return
            if up_since and time.monotonic() - up_since > 2.0:
                attempt = 0  # it stayed up: start the backoff over
            if conn is not None and conn.reconnect_delay_ms is not None:
                delay = conn.reconnect_delay_ms / 1000 * (1 + random.random())
            else:  # full jitter exponential backoff
                attempt += 1
                delay = random.uniform(0, min(self.backoff_max_s, 0.1 * 2 ** min(attempt, 10)))
            await asyncio.sleep(delay)

    async def _open(self) -> _Connection:
        assert self._http is not None
        uid = self.user_id or ""
        endpoints = await dispatch(self._http, self.url, uid, self.tls)
        last: Exception | None = None
        if self.url.startswith("https://"):  # no downgrade: the token goes to the gateway
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
        login = pb.Frame(id=self._new_id(), login=pb.Login(
            protocol_version=1, token=await self.tokens.current(), inbox_seq=self._cursor.have,
            store_id=self._store_id, client_name="chatplane-python"))
        try:
            await link.send(login.SerializeToString())
            reply = pb.Frame()
            reply.ParseFromString(await asyncio.wait_for(link.recv(), 10))
        except BaseException:
            # Drop the connection for good: left open, its login could still
            # succeed later and replace (kick) the next, newer connection.
            link.abort()
            raise
        kind = reply.WhichOneof("body")
        if kind == "error":
            link.abort()
            raise RequestError(reply.error.code, reply.error.message, reply.error.retriable)
        if kind != "login_ack":
            link.abort()
            raise LinkClosed(f"expected login_ack, got {kind}")
        ack = reply.login_ack
        other_store = bool(self._store_id and ack.store_id and ack.store_id != self._store_id)
        if other_store or ack.inbox_head < self._cursor.have:
            # What this device holds was counted in another store (the
            # server's storage was wiped, or restored from elsewhere), or the
            # server has less than the device: start over from what it has,
            # or new messages would be taken for duplicates.
            log.warning("server store %s (inbox head %d) is not the one this device counted "
                        "in (%s, at %d): resyncing from 0", ack.store_id or "?", ack.inbox_head,
                        self._store_id or "?", self._cursor.have)
            self._cursor = InboxCursor(0)
            self._order = ConversationOrder()
            self.store_resets += 1
        self._store_id = ack.store_id or self._store_id
        self._server_max_frame = ack.max_frame_bytes or self._server_max_frame
        self.max_inflight_sends = ack.max_inflight_sends or self.max_inflight_sends
        self.max_users_per_request = ack.max_users_per_request or self.max_users_per_request
        self._acked_sent = min(self._cursor.have, ack.inbox_head)
        self.user_id, self.device_id, self.inbox_head = ack.user_id, ack.device_id, ack.inbox_head
        if self.heartbeat_s is None:
            self.heartbeat_s = max(ack.heartbeat_interval_ms / 1000, 0.5)
        return conn

    async def _serve(self, conn: _Connection) -> None:
        self._conn = conn
        reader = asyncio.get_running_loop().create_task(self._read(conn))
        self._connected.set()
        if self._first_login is not None and not self._first_login.done():
            self._first_login.set_result(None)
        self._inflight.clear()  # resend in cid order, same cids
        if self._send_pause is not None:
            self._send_pause.cancel()
            self._send_pause = None
        self._pump_sends()
        self._start_sync()
        refresh_at = self.tokens.refresh_at()
        assert self.heartbeat_s is not None
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not reader.done():
                wait = max(0.0, next_beat - time.monotonic())
                if refresh_at is not None:
                    wait = max(0.0, min(wait, refresh_at - time.time()))
                done, _ = await asyncio.wait({reader}, timeout=wait)
                if done:
                    break
                if refresh_at is not None and time.time() >= refresh_at:
                    if await self._refresh_token():
                        conn.reconnect_delay_ms = 0
                        raise LinkClosed("token refreshed: logging in again with it")
                    refresh_at = time.time() + 1.0  # the provider failed: again in a second
                if time.monotonic() < next_beat:
                    continue  # woke for the token, not for the heartbeat
                next_beat = time.monotonic() + self.heartbeat_s
                if time.monotonic() - conn.last_frame > 3 * self.heartbeat_s:
                    raise LinkClosed("server silent for three heartbeats")
                heartbeat = pb.Frame(heartbeat=pb.Heartbeat(client_time_ms=int(time.time() * 1000)))
                await conn.link.send(heartbeat.SerializeToString())
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
        while True:
            data = await conn.link.recv()
            conn.last_frame = time.monotonic()
            frame = pb.Frame()
            frame.ParseFromString(data)
            kind = frame.WhichOneof("body")
            if kind == "push":
                self._accept(conn, frame.push.entries)
            elif kind == "group_push":
                push = frame.group_push
                self._accept_group(push.conversation_id, push.head_seq,
                                   wire.group_push_messages(push))
            elif kind == "sync_hint":
                self._start_sync()
            elif kind == "reconnect":
                conn.reconnect_delay_ms = frame.reconnect.delay_ms
                raise LinkClosed(f"server asked to reconnect: {frame.reconnect.reason}")
            elif kind == "error" and frame.error.fatal and frame.id in conn.waiting:
                # the request that made the server close: fail it, then reconnect
                future = conn.waiting.pop(frame.id)
                if not future.done():
                    future.set_exception(RequestError(frame.error.code, frame.error.message, False))
                raise LinkClosed(f"server closed: {frame.error.message}")
            elif kind == "error" and frame.id == 0:
                error = RequestError(frame.error.code, frame.error.message, frame.error.retriable)
                if frame.error.fatal:
                    raise error
                log.warning("server error: %s", error)
            elif frame.id in conn.waiting:
                future = conn.waiting.pop(frame.id)
                if future.done():
                    continue
                if kind == "error":
                    future.set_exception(RequestError(
                        frame.error.code, frame.error.message, frame.error.retriable))
                else:
                    future.set_result(frame)
            elif kind == "error":
                error = RequestError(frame.error.code, frame.error.message, frame.error.retriable)
                if frame.error.fatal:
                    raise error

    def _accept(self, conn: _Connection | None, entries: Any) -> None:
        cursor = self._cursor
        for entry in entries:
            for message in cursor.accept(entry.inbox_seq,
                                         Message.from_pb(entry.message, entry.inbox_seq)):
                self._emit(self._order.offer(message.conversation_id, message.seq, message,
                                             from_inbox=True))
        if conn is not None and cursor.have > self._acked_sent and self._ack_timer is None:
            # acks are cumulative: one per ACK_DELAY_S covers every push since
            # (the server retransmits only after a second)
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._send_ack)
        if cursor.gap:
            self._start_sync()

    def _send_ack(self) -> None:
        self._ack_timer = None
        conn, have = self._conn, self._cursor.have
        if conn is None or have <= self._acked_sent:
            return
        self._acked_sent = have
        ack = pb.Frame(push_ack=pb.PushAck(inbox_seq=have))
        task = asyncio.get_running_loop().create_task(conn.link.send(ack.SerializeToString()))
        task.add_done_callback(_ignore_result)

    def _emit(self, messages: list[Message]) -> None:
        for message in messages:
            self._messages.put_nowait(message)
        if self._order.wants:
            self._start_pulls()

    def _accept_group(self, conversation_id: str, head_seq: int, messages: list[pb.Message],
                      joined_seq: int = 0) -> None:
        """Large-group messages (a push or a sync delta: not from the inbox)."""
        order = self._order
        if joined_seq:
            self._emit(order.start(conversation_id, joined_seq - 1))
        for m in messages:
            self._emit(order.offer(conversation_id, m.seq, Message.from_pb(m), from_inbox=False))
        order.saw_head(conversation_id, head_seq)
        if order.wants:
            self._start_pulls()

    def _start_pulls(self) -> None:
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = asyncio.get_running_loop().create_task(self._pull())
            self._pull_task.add_done_callback(_ignore_result)

    async def _pull(self) -> None:
        """Fill per-conversation gaps from history, one conversation at a time."""
        while self._order.wants:
            conversation_id, after = next(iter(self._order.wants.items()))
            reply = await self._request(pb.Frame(history=pb.HistoryRequest(
                conversation_id=conversation_id, after_seq=after, limit=200)))
            pulled = [(m.seq, Message.from_pb(m)) for m in reply.history_response.messages]
            self._emit(self._order.pulled(conversation_id, pulled))

    def _start_sync(self) -> None:
        """Pull the inbox from the cursor; one sync at a time, re-run if
        something new was asked for meanwhile."""
        if self._sync_task is not None and not self._sync_task.done():
            self._resync = True
            return
        self._sync_task = asyncio.get_running_loop().create_task(self._sync())
        self._sync_task.add_done_callback(_ignore_result)

    async def _sync(self) -> None:
        while True:
            self._resync = False
            cursors = [pb.ConversationCursor(conversation_id=c, seq=self._order.last[c])
                       for c in self._order.large if c in self._order.last]
            reply = await self._request(pb.Frame(sync=pb.SyncRequest(
                after_inbox_seq=self._cursor.have, limit=self.sync_page, conversations=cursors)))
            response = reply.sync_response
            self.inbox_head = max(self.inbox_head, response.inbox_head)
            self._accept(self._conn, response.entries)
            for group in response.groups:
                self._accept_group(group.conversation_id, group.head_seq, list(group.messages),
                                   group.joined_seq)
            if not response.has_more and not self._resync and not self._cursor.gap:
                return
            if not response.entries:
                await asyncio.sleep(0.05)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._closed = True
        if self._first_login is not None and not self._first_login.done():
            self._first_login.set_exception(exc)
        for _, future in self._pending.values():
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
