"""The frame codec, byte level: no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatplane.protocol import frames
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.v1 import frames_pb2 as pb


def sample_frames() -> list[pb.Frame]:
    return [
        pb.Frame(id=1, login=pb.Login(protocol_version=1, token="t", inbox_seq=3)),
        pb.Frame(id=2, send=pb.Send(conversation_id="d:a:b", cid=9, text="héllo")),
        pb.Frame(push=pb.Push(entries=[pb.InboxEntry(inbox_seq=4, message=pb.Message(seq=1))])),
        pb.Frame(id=5, heartbeat=pb.Heartbeat(client_time_ms=12)),
    ]


def test_round_trip() -> None:
    for frame in sample_frames():
        assert frames.decode(frames.encode(frame)) == frame


@given(st.data())
def test_reader_cuts_any_chunking(data: st.DataObject) -> None:
    stream = b"".join(frames.encode_prefixed(f) for f in sample_frames())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    reader = frames.FrameReader()
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += reader.feed_data(stream[start:cut])
        start = cut
    assert [frames.decode(p) for p in out] == sample_frames()
    assert reader.buffered == 0


def test_reader_refuses_oversized_length_before_buffering() -> None:
    reader = frames.FrameReader(max_frame_bytes=1024)
    with pytest.raises(ProtocolError) as err:
        reader.feed_data(struct.pack(">I", 1025))
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError):  # broken for good
        reader.feed_data(b"")


def test_decode_errors_map_to_codes() -> None:
    with pytest.raises(ProtocolError) as err:
        frames.decode(b"\xff\xff\xff")
    assert err.value.code is ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError) as err:
        frames.decode(b"")  # a frame with no body
    assert err.value.code is ErrorCode.UNKNOWN_FRAME
    with pytest.raises(ProtocolError) as err:
        frames.decode(b"x" * 2000, max_frame_bytes=1000)
    assert err.value.code is ErrorCode.FRAME_TOO_LARGE


@settings(max_examples=500)
@given(st.binary(max_size=512))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        frames.decode(data)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_FRAME, ErrorCode.UNKNOWN_FRAME)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=64), max_size=10), st.integers(16, 128))
def test_reader_on_random_bytes_only_raises_protocol_error(chunks: list[bytes], limit: int) -> None:
    reader = frames.FrameReader(max_frame_bytes=limit)
    try:
        for chunk in chunks:
            for payload in reader.feed_data(chunk):
                assert len(payload) <= limit
    except ProtocolError as exc:
        assert exc.code is ErrorCode.FRAME_TOO_LARGE
