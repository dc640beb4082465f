"""Records to wire frames, built once per message where possible; the
Error frame of a refused request."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from chatplane.protocol.errors import SPECS, ErrorCode
from chatplane.protocol.records import InboxItem, StoredMessage, to_pb
from chatplane.v1 import frames_pb2 as pb

message = to_pb  # a record as the wire's Message (protocol/records.py)


def error_frame(request_id: int, code: ErrorCode, message: str) -> pb.Frame:
    """The reply refusing request `request_id` (never fatal: the connection
    stays; a fatal error goes through the session)."""
    spec = SPECS[code]
    return pb.Frame(id=request_id, error=pb.Error(code=int(code), message=message,
                                                  retriable=spec.retriable, fatal=False))


def inbox_entry(item: InboxItem) -> pb.InboxEntry:
    return pb.InboxEntry(inbox_seq=item.inbox_seq, message=message(item.message))


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:  # most lengths and small seqs: no buffer to build
        return _ONE_BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Tags of the push envelope: Frame.push (field 14), Push.entries (1),
# InboxEntry.inbox_seq (1, varint) and InboxEntry.message (2), all but the
# varint length-delimited (frames.proto).
_FRAME_PUSH, _PUSH_ENTRY, _ENTRY_SEQ, _ENTRY_MESSAGE = b"\x72", b"\x0a", b"\x08", b"\x12"

# (conversation, seq) -> the message and its Message's bytes
Encoded = dict[tuple[str, int], tuple[StoredMessage, bytes]]


def push_frame(items: Sequence[InboxItem], encoded: Encoded | None = None) -> bytes:
    """A Push frame, byte for byte what protobuf makes of `pb.Frame(push=...)`:
    the envelope is written here around each message's bytes, and with
    `encoded` (shared by the pushes of one delivery) a message going to
    several devices or users is encoded once. Building the nested protobuf
    objects cost twice the encoding itself (docs/benchmarks.md)."""
    memo: Encoded = {} if encoded is None else encoded
    parts = []
    for item in items:
        m = item.message
        key = (m.conversation_id, m.seq)
        known = memo.get(key)
        if known is not None and (known[0] is m or known[0] == m):
            body = known[1]
        else:
            body = to_pb(m).SerializeToString()
            memo[key] = (m, body)
        entry = (_ENTRY_SEQ + _varint(item.inbox_seq) if item.inbox_seq else b"") + \
            _ENTRY_MESSAGE + _varint(len(body)) + body
        parts.append(_PUSH_ENTRY + _varint(len(entry)) + entry)
    push = b"".join(parts)
    return _FRAME_PUSH + _varint(len(push)) + push


COMPRESS_OVER = 8  # messages: below, a plain list reads faster than it saves


def group_push_frame(conversation_id: str, messages: Sequence[StoredMessage], head_seq: int) -> bytes:
    push = pb.GroupPush(conversation_id=conversation_id, head_seq=head_seq)
    if len(messages) > COMPRESS_OVER:
        batch = pb.MessageBatch(messages=[message(m) for m in messages])
        push.compressed = zlib.compress(batch.SerializeToString(), 1)
    else:
        push.messages.extend(message(m) for m in messages)
    return pb.Frame(group_push=push).SerializeToString()


def group_push_messages(push: pb.GroupPush) -> list[pb.Message]:
    if push.compressed:
        return list(pb.MessageBatch.FromString(zlib.decompress(push.compressed)).messages)
    return list(push.messages)
