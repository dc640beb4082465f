"""Error codes of wire protocol v1 (docs/protocol.md lists them with their meaning).

Codes are stable numbers: clients switch on them. `fatal` codes close the
connection after the Error frame; `retriable` ones tell the SDK to try again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ErrorCode(IntEnum):
    BAD_FRAME = 1  # bytes that do not decode as a Frame
    FRAME_TOO_LARGE = 2  # over the connection's max_frame_bytes
    UNKNOWN_FRAME = 3  # a frame kind this server does not take from clients
    NOT_LOGGED_IN = 4  # anything but Login before the login was accepted
    AUTH_FAILED = 5  # missing, malformed or forged token
    TOKEN_EXPIRED = 6
    RATE_LIMITED = 7  # over the per-connection frame rate; retry later
    FORBIDDEN = 8  # e.g. a send to a conversation the user is not in
    NOT_FOUND = 9
    INVALID_ARGUMENT = 10
    UNAVAILABLE = 11  # storage or a peer tier is down; nothing happened, retry
    INTERNAL = 12
    UNSUPPORTED_VERSION = 13
    ALREADY_LOGGED_IN = 14
    HEARTBEAT_TIMEOUT = 15
    SLOW_CONSUMER = 16  # the device stopped acking pushes; it should resync
    SESSION_REPLACED = 17  # the same device logged in on another connection
    BLOCKED = 18  # one of the two users blocks the other
    TOKEN_REVOKED = 19  # the token (its device, its user, or all before a time) was revoked
    TOO_MANY_CONNECTIONS = 20  # the gateway's or this address's connection cap; retry later
    TOO_MANY_INFLIGHT = 21  # more sends in flight than LoginAck.max_inflight_sends


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    retriable: bool
    fatal: bool


SPECS: dict[ErrorCode, ErrorSpec] = {
    ErrorCode.BAD_FRAME: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.FRAME_TOO_LARGE: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.UNKNOWN_FRAME: ErrorSpec(retriable=False, fatal=False),
    ErrorCode.NOT_LOGGED_IN: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.AUTH_FAILED: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.TOKEN_EXPIRED: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.RATE_LIMITED: ErrorSpec(retriable=True, fatal=False),
    ErrorCode.FORBIDDEN: ErrorSpec(retriable=False, fatal=False),
    ErrorCode.NOT_FOUND: ErrorSpec(retriable=False, fatal=False),
    ErrorCode.INVALID_ARGUMENT: ErrorSpec(retriable=False, fatal=False),
    ErrorCode.UNAVAILABLE: ErrorSpec(retriable=True, fatal=False),
    ErrorCode.INTERNAL: ErrorSpec(retriable=True, fatal=False),
    ErrorCode.UNSUPPORTED_VERSION: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.ALREADY_LOGGED_IN: ErrorSpec(retriable=False, fatal=False),
    ErrorCode.HEARTBEAT_TIMEOUT: ErrorSpec(retriable=True, fatal=True),
    ErrorCode.SLOW_CONSUMER: ErrorSpec(retriable=True, fatal=True),
    ErrorCode.SESSION_REPLACED: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.BLOCKED: ErrorSpec(retriable=False, fatal=False),
    ErrorCode.TOKEN_REVOKED: ErrorSpec(retriable=False, fatal=True),
    ErrorCode.TOO_MANY_CONNECTIONS: ErrorSpec(retriable=True, fatal=True),
    ErrorCode.TOO_MANY_INFLIGHT: ErrorSpec(retriable=True, fatal=False),
}


class ProtocolError(Exception):
    """A violation that maps to one error code (raised by the codec and the
    state machines, turned into an Error frame in one place)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def fatal(self) -> bool:
        return SPECS[self.code].fatal


class RequestError(Exception):
    """A request the server refused; carries the code and text it sent (SDK side)."""

    def __init__(self, code: int, message: str, retriable: bool = False) -> None:
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
        super().__init__(f"{name}: {message}")
        self.code = code
        self.message = message
        self.retriable = retriable
