"""One client connection at the gateway: the session state machine, the
downlink window, and the calls into the im and state tiers.

Transport-agnostic: WebSocket and TCP hand it frame payloads and give it a
`Transport` to write to. Requests that touch storage run as tasks so a slow
one never blocks the connection's acks and heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Protocol

from chatplane import tracing
from chatplane.auth import Identity, TokenError
from chatplane.delivery.acks import DownlinkWindow, Verdict
from chatplane.delivery.sync import resume_cursor, shared_inboxes
from chatplane.gateway.pacing import SendGate
from chatplane.gateway.uplink import Uplink
from chatplane.protocol import wire
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.session import Phase, Request, ServerSession
from chatplane.storage.base import InboxItem
from chatplane.v1 import frames_pb2 as pb

if TYPE_CHECKING:
    from chatplane.gateway.bulk import Handoff, Lent
    from chatplane.gateway.service import Gateway


class Transport(Protocol):
    def write(self, payloads: list[bytes]) -> None:
        """Queue frame payloads, in order; never blocks."""

    def close(self) -> None:
        """Flush what is queued, then close."""

    def lend(self, payload: bytes) -> Lent | None:
        """The socket, with `payload` framed, for the group writer, when
        nothing is queued on it (gateway/bulk.py); None: write it instead."""


# Requests besides sends that write to storage: they take from the same
# per-user bucket as sends (gateway/pacing.py).
WRITES = frozenset({"open_direct", "friend_op", "group_create", "group_op", "mark_read"})


def now_ms() -> float:
    return time.monotonic() * 1000.0


class Connection:
    __slots__ = ("_flushing", "_loop", "_tasks", "conn_id", "device_id", "gateway", "groups", "peer", "sends",
                 "session", "token", "transport", "uplink", "user_id", "window")

    def __init__(self, gateway: Gateway, transport: Transport, peer: str = "") -> None:
        self.gateway = gateway
        self.transport = transport
        self.peer = peer
        self.session = ServerSession(gateway.session_limits, now_ms())
        self.window: DownlinkWindow[InboxItem] | None = None
        self.user_id = ""
        self.device_id = ""
        self.conn_id = ""
        self.token: Identity | None = None  # what the login's token said (expiry, iat)
        # large group -> the highest head this device was told of (a push or
        # a sync's GroupDelta); the head check compares it with the group's
        self.groups: dict[str, int] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self._flushing = False  # a write of what the session queued is scheduled
        # asked once: asyncio.get_running_loop() costs a getpid() per call (CPython 3.11)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sends = SendGate(gateway.settings.abuse.max_inflight_sends)
        self.uplink: Uplink | None = None  # made at the first send (gateway/uplink.py)

    @property
    def opened_ms(self) -> float:
        return self.session.opened_ms

    # -- transport side ------------------------------------------------------

    def on_payload(self, payload: bytes) -> None:
        now = now_ms()  # one clock read per frame
        for request in self.session.receive(payload, now):
            self._handle(request, now)
        self.flush()

    def _handle(self, request: Request, now: float | None = None) -> None:
        kind = request.kind
        if kind == "push_ack":
            window = self.window
            if window is not None:
                window.ack(request.frame.push_ack.inbox_seq)
                if not window.unacked:
                    self.gateway.retransmitting.discard(self)
        elif kind == "send":
            try:  # decided here, in arrival order (docs: gateway/pacing.py)
                self.sends.admit(request.frame.send.cid, self.user_id, self.gateway.user_rates,
                                 now_ms() if now is None else now)
            except ProtocolError as exc:
                self.session.error(request.id, exc.code, exc.message)
                return
            if self.uplink is None:
                self.uplink = Uplink(self)
            self.uplink.submit(request)  # in cid order per conversation
        elif kind in WRITES and not self.gateway.user_rates.take(self.user_id, now_ms()):
            self.session.error(request.id, ErrorCode.RATE_LIMITED,
                               "over the user's write rate; retry later")
        else:
            self._spawn(request)

    def on_protocol_error(self, exc: ProtocolError) -> None:
        self.session.fail(0, exc)
        self.flush()

    def on_closed(self) -> None:
        """The transport is gone (either side closed it)."""
        self.session.close()
        self.gateway.forget(self)
        if self._tasks:
            for task in self._tasks:
                task.cancel()

    def flush(self) -> None:
        """Write what the session queued, once per loop turn: the replies,
        pushes and echoes queued in one turn go out in one socket write, not
        one each. A closing session is written (and closed) at once."""
        if self._flushing:
            if self.session.closed:
                self.flush_now()
            return
        session = self.session
        if session.closed:
            self.flush_now()
        elif session.has_output:
            self._flushing = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flushing = False
        out = self.session.data_to_send()
        if out:
            self.transport.write(out)
        if self.session.closed:
            self.transport.close()

    def _spawn(self, request: Request) -> None:
        self.spawn(self._serve(request))

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run `work` as a task of this connection (cancelled when it closes)."""
        if self._tasks is None:
            self._tasks = set()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- serving requests ----------------------------------------------------

    async def _serve(self, request: Request) -> None:
        try:
            if request.kind == "login":
                await self._login(request)
            else:
                reply = await self._answer(request)
                if reply.WhichOneof("body") == "sync_response":
                    self._told_by_sync(reply.sync_response)
                self.session.send(reply)
        except ProtocolError as exc:
            if request.kind == "login":
                self.gateway.metrics.login_failures += 1
                self.session.reject_login(request.id, exc.code, exc.message)
            elif exc.fatal:
                self.session.fail(request.id, exc)
            else:
                self.session.error(request.id, exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one request, not the connection
            self.gateway.log.exception("request %s failed", request.kind)
            self.session.error(request.id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
        self.flush()

    async def _login(self, request: Request) -> None:
        login = request.body
        assert isinstance(login, pb.Login)
        try:
            identity = self.gateway.signer.verify(login.token)
        except TokenError as exc:
            code = ErrorCode.TOKEN_EXPIRED if exc.reason == "expired" else ErrorCode.AUTH_FAILED
            raise ProtocolError(code, str(exc)) from exc
        if self.gateway.revocations.revoked(identity):
            raise ProtocolError(ErrorCode.TOKEN_REVOKED, "token revoked")
        if self.gateway.draining:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "gateway is draining; use dispatch")
        head = await self.gateway.im.inbox_head(identity.user_id)
        if self.session.closed:
            return
        # Pushes that arrive before the ack are dropped (see `push`): they were
        # stored before the ack, so the device's own sync after it gets them.
        self.user_id, self.device_id = identity.user_id, identity.device_id
        self.token = identity
        self.conn_id = self.gateway.new_conn_id()
        delivery = self.gateway.settings.delivery
        store_id = self.gateway.im.store_id
        # the device's own resume decision (delivery.sync.resume_cursor): a
        # cursor counted in another store (wiped, or restored from elsewhere),
        # or past the head, means nothing here: the device starts over from 0
        if login.store_id == store_id and shared_inboxes(store_id):
            # an inbox sequence linked regions share (user homes): a cursor past this
            # region's copy was counted at the user's home, and what lies between is on
            # its way here by replication; the device holds it, so nothing is pushed twice
            head = max(head, login.inbox_seq)
        claimed, _ = resume_cursor(login.inbox_seq, login.store_id, store_id, head)
        self.window = DownlinkWindow(
            # a device that claims more than exists (the store lost history)
            # is pushed everything past the real head
            acked=min(claimed, head),
            head=head,
            capacity=delivery.push_window,
            rto_ms=delivery.retransmit_ms,
            max_rto_ms=delivery.retransmit_max_ms,
            max_attempts=delivery.retransmit_attempts,
        )
        self.gateway.attach(self)
        if self.session.closed:  # a newer connection of the device is here
            return
        await self.gateway.state.register(self)
        if self.session.closed:
            return
        held = self.session.accept_login(
            request.id,
            identity.user_id,
            identity.device_id,
            pb.LoginAck(
                user_id=identity.user_id,
                device_id=identity.device_id,
                inbox_head=head,
                store_id=store_id,
                region=self.gateway.settings.server.region,
                server_id=self.gateway.server_id,
                max_inflight_sends=self.gateway.settings.abuse.max_inflight_sends,
            ),
        )
        self.gateway.logged_in(self)
        for pipelined in held:
            self._handle(pipelined)

    async def _answer(self, request: Request) -> pb.Frame:
        # a client's request starts its trace here, in `up` and in a cluster gateway alike
        with tracing.span("gateway.request", kind=request.kind):
            return await self.gateway.im.handle(self.user_id, self.device_id, request.frame)

    # -- the state tier's side (DeviceLink) ----------------------------------

    def push(self, items: Sequence[InboxItem], encoded: wire.Encoded | None = None) -> None:
        """New inbox entries of this device's user (`encoded`: the messages'
        bytes, shared by the pushes of one delivery; protocol/wire.py)."""
        window = self.window
        if window is None or self.session.phase is not Phase.ACTIVE:
            return
        now = now_ms()
        ready = []
        for item in items:
            send, verdict = window.offer(item.inbox_seq, item, now)
            if send:
                ready.append(item)
            elif verdict is Verdict.SYNC_HINT:
                self.session.send(pb.Frame(sync_hint=pb.SyncHint(inbox_head=item.inbox_seq)))
        if ready:
            self.session.send_bytes(wire.push_frame(ready, encoded))
            self.gateway.retransmitting.add(self)
            self.gateway.metrics.pushed += len(ready)
        self.flush()

    def push_raw(self, payload: bytes, handoff: Handoff | None = None) -> None:
        """An encoded frame shared by many devices (large-group pushes); no
        ack window: the client pulls what it misses by seq. With a lending
        `handoff`, the socket goes to the group writer (gateway/bulk.py)
        when the transport can lend it; else it is written here."""
        if self.session.phase is not Phase.ACTIVE:
            return
        if self._flushing:  # what the session queued goes first, in order
            self.flush_now()
        self.session.frames_out += 1
        if handoff is not None and handoff.lending:
            item = self.transport.lend(payload)
            if item is not None:
                handoff.lent.append(item)
                return
        self.transport.write([payload])

    def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                   handoff: Handoff | None = None) -> bool:
        """A large-group frame relayed by the state tier (cluster): written
        like `push_raw` (or lent to the group writer through `handoff`), and
        the device is now told of the group's head. False when not logged
        in (nothing written)."""
        if self.session.phase is not Phase.ACTIVE:
            return False
        self.push_raw(payload, handoff)
        if self.groups is None:
            self.groups = {}
        if head_seq > self.groups.get(conversation_id, 0):
            self.groups[conversation_id] = head_seq
        return True

    def _told_by_sync(self, response: pb.SyncResponse) -> None:
        """The last page of a sync lists every large group of the user with
        its head: the device now knows them; groups it left drop out."""
        if response.has_more:
            return
        before = self.groups or {}
        self.groups = {g.conversation_id: max(g.head_seq, before.get(g.conversation_id, 0))
                       for g in response.groups} or None

    def kick(self, reason: str) -> None:
        if self.session.closed:
            return
        self.session.fail(0, ProtocolError(ErrorCode.SESSION_REPLACED, reason), force_close=True)
        self.flush()

    def end_session(self, code: ErrorCode, reason: str) -> None:
        """Close a logged-in session whose token no longer holds (expired,
        revoked): the error frame, then the close."""
        if self.session.closed:
            return
        self.session.fail(0, ProtocolError(code, reason), force_close=True)
        self.flush()

    def reconnect(self, delay_ms: int, reason: str) -> None:
        """Ask the client to go elsewhere (drain), then close."""
        self.session.send(pb.Frame(reconnect=pb.Reconnect(delay_ms=delay_ms, reason=reason)))
        self.session.close()
        self.flush()

    def tick(self, now: float) -> None:
        """Deadlines and retransmission; called by the gateway's sweeper."""
        self.session.tick(now)
        window = self.window
        if window is not None and window.unacked and not self.session.closed:
            items, verdict = window.due(now)
            if verdict is Verdict.GIVE_UP:
                self.session.fail(0, ProtocolError(
                    ErrorCode.SLOW_CONSUMER, "pushes not acknowledged; resume with sync"))
            elif items:
                self.gateway.metrics.retransmitted += len(items)
                for start in range(0, len(items), 256):
                    self.session.send_bytes(wire.push_frame(items[start:start + 256]))
        self.flush()
