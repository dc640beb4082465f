"""The server side of one client connection, as a state machine without I/O.

The gateway feeds it frame payloads (`receive`) and the clock (`tick`); it
returns `Request` events for the gateway to serve and queues the bytes to send
(`data_to_send`). Every protocol rule about a connection lives here: login
first, one login, frame size, rate limit, heartbeat and login deadlines, and
the mapping of every violation to one error code and, when fatal, a close.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from google.protobuf.message import Message as PbMessage

from chatplane.protocol import frames
from chatplane.protocol.bounds import Bounds, problem
from chatplane.protocol.errors import SPECS, ErrorCode, ProtocolError
from chatplane.v1 import frames_pb2 as pb


class Phase(Enum):
    AWAITING_LOGIN = "awaiting_login"
    LOGGING_IN = "logging_in"  # Login received, the gateway is checking it
    ACTIVE = "active"
    CLOSED = "closed"


# Frames a client may pipeline behind its Login before the LoginAck.
MAX_HELD_DURING_LOGIN = 32

# Frame kinds a client may send once logged in (each becomes a Request).
CLIENT_REQUESTS = frozenset({
    "send", "push_ack", "sync", "history", "open_direct",
    "friend_op", "friends", "group_create", "group_op", "members", "conversations", "mark_read",
    "receipts", "invitations",
})


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    kind: str  # the Frame oneof name: "login", "send", "sync" ...
    body: PbMessage
    frame: pb.Frame  # the whole frame `body` is part of: passed on to im as it came


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_frame_bytes: int = frames.DEFAULT_MAX_FRAME_BYTES
    rate_per_s: float = 500.0
    burst: int = 1000
    heartbeat_interval_ms: int = 15_000
    login_timeout_ms: int = 10_000
    # A client over the rate gets RATE_LIMITED for each refused frame; after
    # this many refusals in a row it is closed.
    max_refusals: int = 200
    # what every request field may hold (protocol/bounds.py)
    bounds: Bounds = field(default_factory=Bounds)


class ServerSession:
    def __init__(self, limits: SessionLimits, now_ms: float) -> None:
        self.limits = limits
        self.phase = Phase.AWAITING_LOGIN
        # phase is CLOSED: a plain attribute, read several times per frame
        self.closed = False
        self.opened_ms = now_ms
        self.last_seen_ms = now_ms
        self.user_id = ""
        self.device_id = ""
        self.close_code: ErrorCode | None = None
        self._out: list[bytes] = []
        self._tokens = float(limits.burst)
        self._tokens_at = now_ms
        self._refusals = 0
        self._held: list[pb.Frame] = []
        self.frames_in = 0
        self.frames_out = 0

    # -- input ---------------------------------------------------------------

    def receive(self, payload: bytes, now_ms: float) -> list[Request]:
        """One frame's bytes from the transport (a WS message, a TCP payload)."""
        if self.closed:
            return []
        self.last_seen_ms = now_ms
        self.frames_in += 1
        try:
            frame, kind = frames.decode_kind(payload, self.limits.max_frame_bytes)
        except ProtocolError as exc:
            self.fail(0, exc)
            return []
        if not self._take_token(now_ms):
            self._refusals += 1
            if self._refusals > self.limits.max_refusals:
                self.fail(frame.id, ProtocolError(ErrorCode.RATE_LIMITED, "rate limit: closing"),
                          force_close=True)
            else:
                self.error(frame.id, ErrorCode.RATE_LIMITED, "over the frame rate limit; retry later")
            return []
        self._refusals = 0
        return self._dispatch(frame, kind)

    def _dispatch(self, frame: pb.Frame, kind: str) -> list[Request]:
        if kind == "heartbeat":
            self.send(pb.Frame(id=frame.id, heartbeat_ack=pb.HeartbeatAck(
                client_time_ms=frame.heartbeat.client_time_ms,
                server_time_ms=int(self.last_seen_ms))))
            return []
        if kind == "login":
            if self.phase is not Phase.AWAITING_LOGIN:
                self.error(frame.id, ErrorCode.ALREADY_LOGGED_IN, "this connection is logged in")
                return []
            if frame.login.protocol_version not in (0, frames.PROTOCOL_VERSION):
                self.fail(frame.id, ProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"protocol version {frame.login.protocol_version} not supported; use 1"))
                return []
            out_of_bounds = problem(kind, frame.login, self.limits.bounds)
            if out_of_bounds is not None:  # a login that cannot be served closes
                self.fail(frame.id, ProtocolError(ErrorCode.INVALID_ARGUMENT, out_of_bounds),
                          force_close=True)
                return []
            self.phase = Phase.LOGGING_IN
            return [Request(frame.id, kind, frame.login, frame)]
        if self.phase is Phase.LOGGING_IN and len(self._held) < MAX_HELD_DURING_LOGIN:
            self._held.append(frame)  # pipelined behind the login: served once it is accepted
            return []
        if self.phase is not Phase.ACTIVE:
            self.fail(frame.id, ProtocolError(ErrorCode.NOT_LOGGED_IN, f"{kind} before login"))
            return []
        if kind not in CLIENT_REQUESTS:
            self.error(frame.id, ErrorCode.UNKNOWN_FRAME, f"{kind} is not a client frame")
            return []
        body = getattr(frame, kind)
        out_of_bounds = problem(kind, body, self.limits.bounds)
        if out_of_bounds is not None:  # at the edge: im and storage never see the value
            self.error(frame.id, ErrorCode.INVALID_ARGUMENT, out_of_bounds)
            return []
        return [Request(frame.id, kind, body, frame)]

    def _take_token(self, now_ms: float) -> bool:
        elapsed = max(0.0, now_ms - self._tokens_at) / 1000.0
        self._tokens = min(float(self.limits.burst), self._tokens + elapsed * self.limits.rate_per_s)
        self._tokens_at = now_ms
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def tick(self, now_ms: float) -> None:
        """Deadlines: login must finish, and a silent client is closed after
        three heartbeat intervals."""
        if self.phase in (Phase.AWAITING_LOGIN, Phase.LOGGING_IN):
            if now_ms - self.opened_ms > self.limits.login_timeout_ms:
                self.fail(0, ProtocolError(ErrorCode.NOT_LOGGED_IN, "no login in time"))
        elif self.phase is Phase.ACTIVE:
            if now_ms - self.last_seen_ms > 3 * self.limits.heartbeat_interval_ms:
                self.fail(0, ProtocolError(ErrorCode.HEARTBEAT_TIMEOUT, "no frame for too long"))

    def check_due_ms(self) -> float | None:
        """No deadline of `tick` can pass before this time (None: closed, none
        will). Before the login it is also the earliest a heartbeat deadline
        could come once logged in, so a login never needs an earlier look."""
        silent_ms = 3 * self.limits.heartbeat_interval_ms
        if self.phase in (Phase.AWAITING_LOGIN, Phase.LOGGING_IN):
            return self.opened_ms + min(self.limits.login_timeout_ms, silent_ms)
        if self.phase is Phase.ACTIVE:
            return self.last_seen_ms + silent_ms
        return None

    # -- decisions by the gateway ------------------------------------------

    def accept_login(self, request_id: int, user_id: str, device_id: str,
                     ack: pb.LoginAck) -> list[Request]:
        """Send the ack; returns the requests that were pipelined behind the login."""
        if self.phase is not Phase.LOGGING_IN:
            return []
        self.phase = Phase.ACTIVE
        self.user_id = user_id
        self.device_id = device_id
        ack.heartbeat_interval_ms = self.limits.heartbeat_interval_ms
        ack.max_frame_bytes = self.limits.max_frame_bytes
        self.send(pb.Frame(id=request_id, login_ack=ack))
        held, self._held = self._held, []
        requests: list[Request] = []
        for frame in held:
            kind = frame.WhichOneof("body")
            assert kind is not None
            requests += self._dispatch(frame, kind)
        return requests

    def reject_login(self, request_id: int, code: ErrorCode, message: str) -> None:
        self._held = []
        self.fail(request_id, ProtocolError(code, message), force_close=True)

    # -- output --------------------------------------------------------------

    def send(self, frame: pb.Frame) -> None:
        if self.closed:
            return
        self._out.append(frame.SerializeToString())
        self.frames_out += 1

    def send_bytes(self, payload: bytes) -> None:
        if not self.closed:
            self._out.append(payload)
            self.frames_out += 1

    def error(self, request_id: int, code: ErrorCode, message: str) -> None:
        spec = SPECS[code]
        self.send(pb.Frame(id=request_id, error=pb.Error(
            code=int(code), message=message, retriable=spec.retriable, fatal=spec.fatal)))

    def fail(self, request_id: int, exc: ProtocolError, *, force_close: bool = False) -> None:
        """Send the error; close after it when the code is fatal."""
        fatal = force_close or exc.fatal
        spec = SPECS[exc.code]
        self.send(pb.Frame(id=request_id, error=pb.Error(
            code=int(exc.code), message=exc.message, retriable=spec.retriable, fatal=fatal)))
        if fatal:
            self.close_code = exc.code
            self.close()

    def close(self) -> None:
        self.phase = Phase.CLOSED
        self.closed = True

    @property
    def has_output(self) -> bool:
        """Frames are queued for `data_to_send`."""
        return bool(self._out)

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out
