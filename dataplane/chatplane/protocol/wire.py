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


def push_frame(items: Sequence[InboxItem]) -> bytes:
    return pb.Frame(push=pb.Push(entries=[inbox_entry(i) for i in items])).SerializeToString()


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
