"""Inbox entries between storage records and the gRPC messages of the tiers."""

from __future__ import annotations

from collections.abc import Iterable

from chatplane.protocol import wire
from chatplane.storage.base import InboxItem, StoredMessage
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb


def deliveries(items: Iterable[InboxItem]) -> list[spb.Delivery]:
    return [spb.Delivery(user_id=i.user_id, entry=wire.inbox_entry(i)) for i in items]


def message(m: pb.Message) -> StoredMessage:
    return StoredMessage(
        conversation_id=m.conversation_id, seq=m.seq, message_id=m.message_id, sender=m.sender,
        sender_device=m.sender_device, cid=m.cid, text=m.text, sent_at_ms=m.sent_at_ms,
        payload=m.payload, content_type=m.content_type)


def inbox_item(d: spb.Delivery) -> InboxItem:
    return InboxItem(user_id=d.user_id, inbox_seq=d.entry.inbox_seq, message=message(d.entry.message))
