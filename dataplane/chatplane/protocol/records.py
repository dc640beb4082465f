"""The message records every layer shares, and their one converter to and
from the wire's `Message`.

Storage returns these records, the tiers pass them around (in process, or
over gRPC as `pb.Message`), and the wire frames carry them to devices: the
message's fields are spelled out here, once each way. The id rule (what a
user or device id may hold) lives here too, since frames, storage and tokens
all check it. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatplane.v1 import frames_pb2 as pb

# User and device ids: what an app's backend can name safely in URLs and keys.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


@dataclass(frozen=True, slots=True)
class StoredMessage:
    conversation_id: str
    seq: int
    message_id: str
    sender: str
    sender_device: str
    cid: int
    text: str
    sent_at_ms: int
    payload: bytes = b""
    content_type: str = "text"


@dataclass(frozen=True, slots=True)
class InboxItem:
    user_id: str
    inbox_seq: int
    message: StoredMessage


def to_pb(m: StoredMessage) -> pb.Message:
    return pb.Message(
        conversation_id=m.conversation_id, seq=m.seq, message_id=m.message_id, sender=m.sender,
        sender_device=m.sender_device, cid=m.cid, text=m.text, payload=m.payload,
        content_type=m.content_type, sent_at_ms=m.sent_at_ms)


def from_pb(m: pb.Message) -> StoredMessage:
    return StoredMessage(
        conversation_id=m.conversation_id, seq=m.seq, message_id=m.message_id, sender=m.sender,
        sender_device=m.sender_device, cid=m.cid, text=m.text, sent_at_ms=m.sent_at_ms,
        payload=m.payload, content_type=m.content_type)
