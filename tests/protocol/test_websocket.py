"""The WebSocket core (protocol/websocket.py), byte level: no sockets."""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatplane.protocol import websocket as ws

UPGRADE = {"Upgrade": "websocket", "Connection": "keep-alive, Upgrade",
           "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def client_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None,
                 rsv: int = 0) -> bytes:
    """A frame as a client sends it (masked unless `mask` is b"")."""
    mask = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not mask:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_accept_answers_the_rfc_example() -> None:
    answer = ws.accept(UPGRADE)
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    # RFC 6455 section 1.3's example key and accept value
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in answer
    assert answer.endswith(b"\r\n\r\n")
    assert b"Sec-WebSocket-Extensions" not in answer  # no compression, whatever was offered


@pytest.mark.parametrize("header,value", [
    ("Upgrade", "h2c"), ("Connection", "keep-alive"), ("Sec-WebSocket-Version", "8"),
    ("Sec-WebSocket-Key", "short"), ("Sec-WebSocket-Key", base64.b64encode(b"x" * 15).decode()),
])
def test_accept_refuses_a_bad_upgrade(header: str, value: str) -> None:
    with pytest.raises(ws.HandshakeError):
        ws.accept({**UPGRADE, header: value})


@given(st.lists(st.binary(max_size=70_000), min_size=1, max_size=4), st.data())
def test_reader_cuts_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(client_frame(ws.BINARY, p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    reader = ws.WsReader(100_000)
    out: list[tuple[int, bytes]] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += reader.feed_data(stream[start:cut])
        start = cut
    assert out == [(ws.BINARY, p) for p in payloads]


def test_fragments_come_out_whole_with_controls_between() -> None:
    reader = ws.WsReader(1000)
    stream = (client_frame(ws.BINARY, b"ab", fin=False) + client_frame(ws.PING, b"p")
              + client_frame(ws.CONTINUATION, b"cd", fin=False)
              + client_frame(ws.CONTINUATION, b"ef"))
    assert reader.feed_data(stream) == [(ws.PING, b"p"), (ws.BINARY, b"abcdef")]


@pytest.mark.parametrize("stream,code", [
    (client_frame(ws.BINARY, b"x", mask=b""), ws.PROTOCOL_ERROR),  # unmasked
    (client_frame(ws.BINARY, b"x", rsv=0x40), ws.PROTOCOL_ERROR),  # compressed: not negotiated
    (client_frame(0x3, b"x"), ws.PROTOCOL_ERROR),  # reserved opcode
    (client_frame(ws.PING, b"x", fin=False), ws.PROTOCOL_ERROR),
    (client_frame(ws.PING, b"x" * 126), ws.PROTOCOL_ERROR),
    (client_frame(ws.CONTINUATION, b"x"), ws.PROTOCOL_ERROR),
    (client_frame(ws.BINARY, b"a", fin=False) + client_frame(ws.BINARY, b"b"), ws.PROTOCOL_ERROR),
    (client_frame(ws.BINARY, b"x" * 101), ws.MESSAGE_TOO_BIG),
    (client_frame(ws.BINARY, b"x" * 60, fin=False) + client_frame(ws.CONTINUATION, b"y" * 41),
     ws.MESSAGE_TOO_BIG),
], ids=["unmasked", "rsv1", "reserved-opcode", "fragmented-ping", "long-ping",
        "lone-continuation", "data-inside-a-message", "too-big", "too-big-in-fragments"])
def test_violations_name_their_close_code(stream: bytes, code: int) -> None:
    reader = ws.WsReader(100)
    with pytest.raises(ws.WsError) as caught:
        reader.feed_data(stream)
    assert caught.value.code == code
    with pytest.raises(ws.WsError):  # broken for good
        reader.feed_data(client_frame(ws.BINARY, b"ok"))


def test_an_oversized_message_is_refused_before_its_payload_arrives() -> None:
    reader = ws.WsReader(100)
    head = client_frame(ws.BINARY, b"x" * 1_000_000)[:14]  # the header alone: 127, 8-byte length, mask
    with pytest.raises(ws.WsError) as caught:
        reader.feed_data(head)
    assert caught.value.code == ws.MESSAGE_TOO_BIG


def test_server_frames_and_close_codes() -> None:
    assert ws.binary_frame(b"hi") == b"\x82\x02hi"
    assert ws.binary_frame(b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert ws.binary_frame(b"x" * 70_000)[:2] == b"\x82\x7f"
    assert ws.control_frame(ws.PONG, b"p") == b"\x8a\x01p"
    assert ws.close_frame(ws.POLICY_VIOLATION) == b"\x88\x02\x03\xf0"
    assert ws.close_code(b"") == ws.NORMAL
    assert ws.close_code(struct.pack("!H", 4000)) == 4000
    for bad in (b"\x03", struct.pack("!H", 1005), struct.pack("!H", 999)):
        with pytest.raises(ws.WsError):
            ws.close_code(bad)


def test_unmask_is_its_own_inverse() -> None:
    data, mask = os.urandom(1001), os.urandom(4)
    masked = ws.unmask(mask, data)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert ws.unmask(mask, masked) == data
    assert ws.unmask(mask, b"") == b""


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=20))
def test_any_bytes_give_messages_or_one_close_code_never_a_crash(chunks: list[bytes]) -> None:
    """Whatever a client sends: whole messages within the bound, or WsError
    with a close code (and the reader stays broken); nothing else escapes, and
    what the reader holds never exceeds one frame's header and payload bound."""
    limit = 64
    reader = ws.WsReader(limit)
    failed: ws.WsError | None = None
    for chunk in chunks:
        try:
            for opcode, payload in reader.feed_data(chunk):
                assert opcode in (ws.BINARY, ws.TEXT, ws.CLOSE, ws.PING, ws.PONG)
                assert len(payload) <= max(limit, 125)
        except ws.WsError as exc:
            assert exc.code in (ws.PROTOCOL_ERROR, ws.MESSAGE_TOO_BIG)
            if failed is not None:
                assert exc is failed  # broken for good: the same error again
            failed = exc
        assert len(reader._buffer) <= 14 + max(limit, 125) + 300  # a header, a payload, a chunk
