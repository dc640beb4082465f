"""WebSocket (RFC 6455), server side, sans I/O: the opening handshake's
answer, frames to send, and a push parser for what clients send.

The gateway answers the upgrade and then owns the socket itself
(gateway/transports.py `WebSocketProtocol`), as it does a raw TCP one: an
idle WebSocket costs a parser and a connection, not an HTTP request, its
parser and two tasks. No extension is negotiated (no permessage-deflate:
frames are small protobufs, and a deflate context costs tens of KiB per
connection), no subprotocol is chosen.

`WsReader.feed_data` returns the messages completed by these bytes as
(opcode, payload) pairs; a fragmented message comes out whole. Sizes are
checked before a payload is buffered. Every violation raises `WsError` with
the close code to answer with; after one the reader is broken for good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Generator, Mapping

from chatplane.protocol.frames import PushParser

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = frozenset({TEXT, BINARY})
CONTROL_OPCODES = frozenset({CLOSE, PING, PONG})

# close codes (RFC 6455 section 7.4.1)
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
# codes a peer may send (the rest of 1000-2999 is reserved, 3000-4999 is for applications)
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_HEAD = struct.Struct("!BB")
_LEN2 = struct.Struct("!H")
_LEN8 = struct.Struct("!Q")
_HEAD2 = struct.Struct("!BBH")
_HEAD8 = struct.Struct("!BBQ")


class WsError(Exception):
    """A client broke the protocol: close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(ValueError):
    """An upgrade request this server does not accept (answer 400)."""


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


def accept(headers: Mapping[str, str]) -> bytes:
    """The whole 101 answer to an upgrade request with these (case-insensitive)
    headers, or HandshakeError. The method (GET) is the router's to check."""
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        raise HandshakeError("no WebSocket upgrade header")
    if not _has_token(headers.get("Connection", ""), "upgrade"):
        raise HandshakeError("no Connection: upgrade header")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise HandshakeError("unsupported WebSocket version (13 only)")
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise HandshakeError("bad Sec-WebSocket-Key")
    digest = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + digest + b"\r\n\r\n")


def binary_frame(payload: bytes) -> bytes:
    """An unmasked, final, binary frame (server to client)."""
    n = len(payload)
    if n < 126:
        return _HEAD.pack(0x82, n) + payload
    if n < 65536:
        return _HEAD2.pack(0x82, 126, n) + payload
    return _HEAD8.pack(0x82, 127, n) + payload


def control_frame(opcode: int, data: bytes = b"") -> bytes:
    """An unmasked, final control frame (at most 125 bytes of data)."""
    return _HEAD.pack(0x80 | opcode, len(data)) + data[:125]


def close_frame(code: int, reason: str = "") -> bytes:
    return control_frame(CLOSE, _LEN2.pack(code) + reason.encode()[:123])


def close_code(payload: bytes) -> int:
    """The code of a received close frame's payload (NORMAL when it has none),
    or WsError when the payload is malformed."""
    if not payload:
        return NORMAL
    if len(payload) < 2:
        raise WsError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    (code,) = _LEN2.unpack_from(payload)
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise WsError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    return code


def unmask(mask: bytes, data: bytes) -> bytes:
    """`data` XOR the 4-byte `mask` repeated (one big-integer XOR: C speed)."""
    n = len(data)
    if not n:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


class WsReader(PushParser[tuple[int, bytes]]):
    """Cuts a client's byte stream into whole messages; `max_message_bytes`
    bounds a message (all its fragments together): over it, MESSAGE_TOO_BIG."""

    __slots__ = ("max_message_bytes",)
    failure = WsError

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        super().__init__()

    def _parse(self) -> Generator[None, None, None]:
        fragments: list[bytes] = []
        fragmented = -1  # the opcode of the message being reassembled, -1: none
        size = 0
        while True:
            first, second = _HEAD.unpack((yield from self._read_exact(2)))
            fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            if first & 0x70:
                raise WsError(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
            if not second & 0x80:
                raise WsError(PROTOCOL_ERROR, "unmasked client frame")
            if opcode in CONTROL_OPCODES:
                if not fin or length > 125:
                    raise WsError(PROTOCOL_ERROR, "fragmented or oversized control frame")
            elif opcode == CONTINUATION:
                if fragmented < 0:
                    raise WsError(PROTOCOL_ERROR, "continuation of no message")
            elif opcode in DATA_OPCODES:
                if fragmented >= 0:
                    raise WsError(PROTOCOL_ERROR, "new message inside a fragmented one")
            else:
                raise WsError(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if length == 126:
                (length,) = _LEN2.unpack((yield from self._read_exact(2)))
            elif length == 127:
                (length,) = _LEN8.unpack((yield from self._read_exact(8)))
            if opcode not in CONTROL_OPCODES and size + length > self.max_message_bytes:
                raise WsError(MESSAGE_TOO_BIG, f"message over {self.max_message_bytes} bytes")
            mask = yield from self._read_exact(4)
            payload = unmask(mask, (yield from self._read_exact(length)))
            if opcode in CONTROL_OPCODES:
                self._ready.append((opcode, payload))
            elif fin and fragmented < 0:
                self._ready.append((opcode, payload))
            elif not fin:
                if fragmented < 0:
                    fragmented = opcode
                fragments.append(payload)
                size += length
            else:
                fragments.append(payload)
                self._ready.append((fragmented, b"".join(fragments)))
                fragments, fragmented, size = [], -1, 0
            del mask, payload  # an idle connection holds no message in this frame
