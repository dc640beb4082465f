"""Frame codec: protobuf `Frame` messages, and the 4-byte length prefix of raw TCP.

Over WebSocket each binary message is one frame (`decode`). Over TCP the
stream is cut by `FrameReader`, a generator-driven push parser: feed it bytes
in any chunking, take whole frames out. Sizes are checked before a payload is
buffered, so a peer cannot make us hold more than `max_frame_bytes`.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from typing import ClassVar, Generic, TypeVar

from google.protobuf.message import DecodeError

from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.v1.frames_pb2 import Frame

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024
LENGTH = struct.Struct(">I")


def encode(frame: Frame) -> bytes:
    return frame.SerializeToString()


def encode_prefixed(frame: Frame) -> bytes:
    body = frame.SerializeToString()
    return LENGTH.pack(len(body)) + body


def prefix(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


def decode(data: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """One frame from one WebSocket message (or one TCP payload)."""
    return decode_kind(data, max_frame_bytes)[0]


def decode_kind(data: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> tuple[Frame, str]:
    """`decode`, with the name of the frame's body ("send", "login" ...)."""
    if len(data) > max_frame_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(data)} bytes over the {max_frame_bytes} limit"
        )
    frame = Frame()
    try:
        frame.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"undecodable frame: {exc}") from exc
    kind = frame.WhichOneof("body")
    if kind is None:
        raise ProtocolError(ErrorCode.UNKNOWN_FRAME, "frame has no known body")
    return frame, kind


Item = TypeVar("Item")


class PushParser(Generic[Item]):
    """A byte stream cut into items by `_parse`, a generator that waits for
    bytes with `_read_exact` and appends what it completes to `_ready`.
    `feed_data` returns the items completed by these bytes. After an error
    (`failure`) the parser is broken for good: the connection must close."""

    __slots__ = ("_buffer", "_error", "_parser", "_ready")
    failure: ClassVar[type[Exception]] = ProtocolError

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ready: list[Item] = []
        self._error: Exception | None = None
        self._parser = self._parse()
        next(self._parser)

    def _parse(self) -> Generator[None, None, None]:
        raise NotImplementedError

    def _read_exact(self, n: int) -> Generator[None, None, bytes]:
        while len(self._buffer) < n:
            yield
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def feed_data(self, data: bytes) -> list[Item]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        try:
            self._parser.send(None)
        except self.failure as exc:
            self._error = exc
            self._ready.clear()
            raise
        ready, self._ready = self._ready, []
        return ready

    @property
    def buffered(self) -> int:
        return len(self._buffer)


class FrameReader(PushParser[bytes]):
    """Cuts a TCP byte stream into frame payloads (length prefix removed).

    Whole frames are cut straight from the buffer, one slice each, with no
    generator step per length and payload: this runs for every frame a
    client sends (docs/benchmarks.md, "The loop thread's Python steps")."""

    __slots__ = ("max_frame_bytes",)

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        super().__init__()

    def _parse(self) -> Generator[None, None, None]:
        yield  # unused: feed_data cuts the frames itself

    def feed_data(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data  # the common case: whole frames in one read, nothing held
        end = len(view)
        start = 0
        ready: list[bytes] = []
        while end - start >= 4:
            (length,) = LENGTH.unpack_from(view, start)
            if length > self.max_frame_bytes:
                self._error = ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes over the {self.max_frame_bytes} limit",
                )
                buffer.clear()
                raise self._error
            if end - start - 4 < length:
                break
            ready.append(bytes(view[start + 4:start + 4 + length]))
            start += 4 + length
        if view is buffer:
            del buffer[:start]
        elif start < end:
            buffer += data[start:] if start else data
        return ready
