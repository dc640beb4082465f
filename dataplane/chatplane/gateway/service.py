"""The gateway: its live connections, their timers, and drain.

One sweeper task serves every connection's deadlines (login, heartbeat,
retransmission), so an idle connection costs no task of its own, and it only
looks at a connection when one of its deadlines could have passed
(`gateway/deadlines.py`). The same sweep closes sessions whose token expired
(buckets by the token's expiry second, TOKEN_EXPIRED), and a revocation
learnt from the watcher closes the sessions it names (TOKEN_REVOKED): a look
at the revoked user's devices, or at every connection for a global one. Logged-in
connections are indexed by user and device (the gateway alone holds devices
and sockets), so what the state tier routes here finds them: inbox entries
(`push_entries`) and large-group flushes (`push_group`), called in process in
`up` and through the `Gateway` gRPC service in a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from chatplane.auth import TokenSigner
from chatplane.gateway.admission import Admission
from chatplane.gateway.bulk import BulkWriter, Handoff
from chatplane.gateway.connection import Connection, now_ms
from chatplane.gateway.deadlines import DeadlineBuckets
from chatplane.gateway.pacing import UserRates
from chatplane.metrics import Metrics
from chatplane.protocol import bounds, wire
from chatplane.protocol.errors import ErrorCode
from chatplane.protocol.session import SessionLimits
from chatplane.revocations import RevocationList
from chatplane.routes import base as routing
from chatplane.settings import Settings
from chatplane.slicing import TimeSlice
from chatplane.storage.base import ANY, InboxItem, Revocation
from chatplane.supervision import Supervisor
from chatplane.v1 import frames_pb2 as pb


class ImApi(Protocol):
    """What the gateway needs from the im tier (in process, or over gRPC)."""

    async def inbox_head(self, user_id: str) -> int: ...

    @property
    def store_id(self) -> str:
        """The storage inbox heads count in ("" while unknown)."""

    async def handle(self, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
        """A client request frame in, its reply or Error frame out."""

    async def handle_sends(self, user_id: str, device_id: str,
                           frames: Sequence[pb.Frame]) -> list[pb.Frame]:
        """One device's send frames into one conversation, in cid order, in;
        a reply per frame out, in order. Sequenced in that order; after a
        retriable failure the later sends are refused unsent."""


class Registry(Protocol):
    """What the gateway tells the state tier about its devices. `register`
    completes before the login is answered (so whatever is stored after the
    LoginAck is routed here); `unregister` never blocks."""

    async def register(self, link: Connection) -> None: ...

    def unregister(self, link: Connection) -> None: ...

SWEEP_INTERVAL_S = 0.1
CHECK_EVERY = 16  # connections between two looks at the slice's clock
DEADLINE_SWEEP_EVERY = 10  # heartbeat/login deadlines: once a second
EXPIRY_HORIZON_S = 300  # a live session's token expiry is looked at least this often


class Gateway:
    def __init__(
        self,
        settings: Settings,
        im: ImApi,
        state: Registry,
        signer: TokenSigner,
        server_id: str,
    ) -> None:
        self.settings = settings
        self.im = im
        self.state = state
        # writes large-group frames outside the event loop (gateway/bulk.py); None: the loop does
        self.group_writer: BulkWriter | None = None
        self.signer = signer
        self.server_id = server_id
        limits = settings.limits
        self.session_limits = SessionLimits(
            max_frame_bytes=limits.max_frame_bytes,
            rate_per_s=limits.rate_limit_frames_per_s,
            burst=limits.rate_limit_burst,
            heartbeat_interval_ms=limits.heartbeat_interval_ms,
            login_timeout_ms=limits.login_timeout_ms,
            bounds=bounds.Bounds.from_limits(limits),
        )
        self.connections: set[Connection] = set()
        # client sockets over both listeners, and sends per user (docs/operations.md)
        self.admission = Admission.configured(settings.abuse)
        self.user_rates = UserRates(settings.abuse.send_rate_per_user_s,
                                    settings.abuse.send_burst_per_user)
        self.users: dict[str, dict[str, Connection]] = {}
        self._boot = secrets.token_hex(3)
        self._next_conn = 0
        self.retransmitting: set[Connection] = set()
        self._deadlines: DeadlineBuckets[Connection] = DeadlineBuckets()
        # token expiries, by wall-clock second (a token's exp is wall-clock)
        self._expiries: DeadlineBuckets[Connection] = DeadlineBuckets()
        self.revocations = RevocationList()
        self.sessions_expired = 0
        self.sessions_revoked = 0
        self.metrics = Metrics()
        self.metrics.gauge("chatplane_connections", "open client connections",
                           lambda: len(self.connections))
        self.metrics.counter("chatplane_connections_refused_total",
                             "sockets refused at accept by the connection caps",
                             lambda: self.admission.refused)
        self.metrics.counter("chatplane_header_timeouts_total",
                             "HTTP sockets closed for not sending a request head in time",
                             lambda: self.admission.timed_out)
        self.metrics.counter("chatplane_sends_rate_limited_total",
                             "sends refused by the per-user send rate",
                             lambda: self.user_rates.refused)
        self.metrics.gauge("chatplane_draining", "1 while the gateway drains",
                           lambda: 1 if self.draining else 0)
        self.metrics.gauge("chatplane_unacked_connections", "connections with unacked pushes",
                           lambda: len(self.retransmitting))
        self.group_pushed = 0  # large-group pushes from the state tier (cluster)
        self.metrics.counter("chatplane_group_pushed_total",
                             "large-group frames pushed to devices from the state tier",
                             lambda: self.group_pushed)
        self.metrics.counter("chatplane_group_writer_sockets_total",
                             "large-group frames the group writer thread wrote (gateway/bulk.py)",
                             lambda: self.group_writer.sockets_written if self.group_writer else 0)
        self.metrics.counter("chatplane_group_writer_failed_total",
                             "sockets that failed under the group writer (their connections closed)",
                             lambda: self.group_writer.sockets_failed if self.group_writer else 0)
        self.metrics.counter("chatplane_group_writer_reclaimed_total",
                             "lent sockets taken back from a group writer that had not got to them"
                             " in time (the event loop wrote their frames)",
                             lambda: self.group_writer.sockets_reclaimed if self.group_writer else 0)
        self.metrics.counter("chatplane_sessions_expired_total",
                             "live sessions closed because their token expired",
                             lambda: self.sessions_expired)
        self.metrics.counter("chatplane_sessions_revoked_total",
                             "live sessions closed because their token was revoked",
                             lambda: self.sessions_revoked)
        self.log = logging.getLogger("chatplane.gateway")
        self.draining = False
        self._sweeper: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def start(self, supervisor: Supervisor) -> None:
        self._sweeper = supervisor.spawn("gateway-deadline-sweep", self._sweep)

    async def stop(self) -> None:
        for task in (self._sweeper, self._drain_task):
            if task is not None:
                task.cancel()
        for conn in list(self.connections):
            conn.session.close()
            conn.flush()
        if self.group_writer is not None:
            self.group_writer.stop()

    def opened(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._look_again(conn)

    def _look_again(self, conn: Connection) -> None:
        due = conn.session.check_due_ms()
        if due is not None:
            self._deadlines.add(conn, due)

    def logged_in(self, conn: Connection) -> None:
        self.metrics.logins += 1
        self._watch_expiry(conn, time.time() * 1000)

    def _watch_expiry(self, conn: Connection, wall_ms: float) -> None:
        """Look at the connection the second after its token's exp (verify()
        still accepts a token in its exp second), or within EXPIRY_HORIZON_S:
        a bucket must not hold a closed connection for the token's whole life."""
        if conn.token is not None:
            due = min((conn.token.expires_at + 1) * 1000, wall_ms + EXPIRY_HORIZON_S * 1000)
            self._expiries.add(conn, due)

    def _close_expired(self) -> None:
        wall_ms = time.time() * 1000
        for conn in self._expiries.pop_due(wall_ms):
            token = conn.token
            if conn not in self.connections or token is None or conn.session.closed:
                continue
            if (token.expires_at + 1) * 1000 > wall_ms:  # not yet
                self._watch_expiry(conn, wall_ms)
                continue
            self.sessions_expired += 1
            conn.end_session(ErrorCode.TOKEN_EXPIRED, "token expired; log in with a new token")

    def apply_revocations(self, rows: Sequence[Revocation]) -> int:
        """New revocations (already merged into `revocations`): close the live
        sessions they revoke. Returns how many were closed."""
        if any(row.user_id == ANY for row in rows):
            targets: Sequence[Connection] = list(self.connections)
        else:
            targets = [conn for user in {row.user_id for row in rows}
                       for conn in self.users.get(user, {}).values()]
        closed = 0
        for conn in targets:
            if conn.token is not None and self.revocations.revoked(conn.token):
                conn.end_session(ErrorCode.TOKEN_REVOKED, "token revoked")
                closed += 1
        self.sessions_revoked += closed
        return closed

    def new_conn_id(self) -> str:
        self._next_conn += 1
        return f"{self._boot}-{self._next_conn}"

    def attach(self, conn: Connection) -> None:
        """Index a connection that is logging in; an older connection of the
        same device here is replaced (kicked). A login that finishes late on
        a connection older than the device's current one is kicked instead:
        the rule the routes keep (routes/base.py), for this gateway's own."""
        devices = self.users.setdefault(conn.user_id, {})
        previous = devices.get(conn.device_id)
        if previous is None or previous is conn:
            devices[conn.device_id] = conn
        elif routing.takes_route(previous.opened_ms, conn.opened_ms, login=True):
            devices[conn.device_id] = conn
            previous.kick(routing.REPLACED)
        else:
            conn.kick(routing.REFUSED)

    def _detach(self, conn: Connection) -> bool:
        """Drop `conn` from the device index; False when it was not its
        device's current connection (replaced, or refused at login)."""
        devices = self.users.get(conn.user_id)
        if devices is None or devices.get(conn.device_id) is not conn:
            return False
        del devices[conn.device_id]
        if not devices:
            del self.users[conn.user_id]
        return True

    def push_entries(self, items: Sequence[InboxItem]) -> int:
        """Entries from the state tier: push each to every device of its user
        connected here. Returns how many device pushes were queued."""
        pushed = 0
        encoded: wire.Encoded = {}  # each message encoded once for all its pushes
        for item in items:
            for conn in tuple(self.users.get(item.user_id, {}).values()):
                conn.push((item,), encoded)
                pushed += 1
        return pushed

    async def push_group(self, conversation_id: str, head_seq: int, payload: bytes,
                         user_ids: Sequence[str], clock: TimeSlice | None = None) -> int:
        """One large-group flush (state/groups.py: in process in `up`, over
        `GroupPush` in a cluster): the same frame to every device of the
        listed users here, which are then known to be told of the group's
        head (the head check compares). Yields when `clock`'s slice is used
        up; the group writer's CPU counts on it."""
        pushed = 0
        clock = clock or TimeSlice()
        handoff = Handoff(self.group_writer, clock)
        for start in range(0, len(user_ids), CHECK_EVERY):
            for user in user_ids[start:start + CHECK_EVERY]:
                for conn in tuple(self.users.get(user, {}).values()):
                    try:
                        pushed += conn.push_group(conversation_id, head_seq, payload, handoff)
                    except Exception:  # one broken connection must not stop the group
                        self.log.exception("group push failed")
            await handoff.step()
        await handoff.finish()
        self.group_pushed += pushed
        return pushed

    def kick_route(self, user_id: str, device_id: str, conn_id: str, reason: str) -> bool:
        conn = self.users.get(user_id, {}).get(device_id)
        if conn is None or conn.conn_id != conn_id:
            return False
        conn.kick(reason)
        return True

    def forget(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.retransmitting.discard(conn)
        if conn.user_id and self._detach(conn):
            self.state.unregister(conn)  # the route of a replaced connection is the newer one's
        self.metrics.frames_in += conn.session.frames_in
        self.metrics.frames_out += conn.session.frames_out
        if conn.session.close_code is not None:
            self.metrics.protocol_errors += 1

    async def _sweep(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            rounds += 1
            now = now_ms()
            deadlines = rounds % DEADLINE_SWEEP_EVERY == 0
            targets = self._deadlines.pop_due(now) if deadlines else list(self.retransmitting)
            if deadlines:
                try:
                    self._close_expired()
                except Exception:  # the sweep must go on
                    self.log.exception("token expiry check failed")
            # thousands of connections take tens of ms: in slices, so no message waits that long
            clock = TimeSlice()
            for i, conn in enumerate(targets):
                if i % CHECK_EVERY == 0 and clock.over():
                    await clock.pause()
                if conn not in self.connections:  # gone (meanwhile, or since it was put in a bucket)
                    continue
                try:
                    conn.tick(now)
                except Exception:  # one broken connection must not stop the sweeper
                    self.log.exception("tick failed for %s", conn.peer)
                if deadlines:
                    self._look_again(conn)

    # -- drain ------------------------------------------------------------

    def drain(self, rate: float, deadline_s: float,
              announce: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop taking logins and move every client elsewhere at `rate`
        connections per second (with jitter), finishing by `deadline_s`.
        `announce` runs first: until dispatch knows the gateway drains, it may
        hand it to the very clients sent away (see GatewayApp.drain)."""
        if self._drain_task is not None and not self._drain_task.done():
            return
        self.draining = True
        self._drain_task = asyncio.get_running_loop().create_task(
            self._drain(rate, deadline_s, announce))

    async def _drain(self, rate: float, deadline_s: float,
                     announce: Callable[[], Awaitable[None]] | None) -> None:
        # Paced by schedule, not by summed sleeps: each connection goes one
        # slot (1/rate, +- half a slot of jitter) after the previous one's
        # slot, so slow steps do not lower the rate; but a stall earns no
        # credit (the schedule never lags now by more than half a slot), so
        # the loop never catches up in a burst above the rate.
        deadline = time.monotonic() + deadline_s
        if announce is not None:
            await announce()
        start = time.monotonic()
        delay_ms = self.settings.drain.reconnect_delay_ms
        slot = 1.0 / rate
        due = start
        while self.connections and time.monotonic() < deadline:
            conn = next(iter(self.connections))
            conn.reconnect(random.randint(0, delay_ms), "gateway draining")
            self.forget(conn)
            now = time.monotonic()
            due = max(due + slot, now - slot / 2)
            await asyncio.sleep(max(0.0, due + random.uniform(-0.5, 0.5) * slot - now))
        for conn in list(self.connections):  # the deadline passed: the rest at once
            conn.reconnect(random.randint(0, delay_ms), "gateway drain deadline")
            self.forget(conn)

    async def wait_drained(self) -> None:
        """Return once a started drain has moved every client (or timed out)."""
        while self._drain_task is None:
            await asyncio.sleep(0.1)
        await asyncio.gather(self._drain_task, return_exceptions=True)

    def drain_status(self) -> dict[str, object]:
        return {"draining": self.draining, "connections": len(self.connections)}
