"""Storage records to wire frames, built once per message where possible."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from chatplane.storage.base import InboxItem, StoredMessage
from chatplane.v1 import frames_pb2 as pb


def message(m: StoredMessage) -> pb.Message:
    return pb.Message(
        conversation_id=m.conversation_id,
        seq=m.seq,
        message_id=m.message_id,
        sender=m.sender,
        sender_device=m.sender_device,
        cid=m.cid,
        text=m.text,
        payload=m.payload,
        content_type=m.content_type,
        sent_at_ms=m.sent_at_ms,
    )


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
