"""Inbox entries between storage records and the gRPC messages of the tiers."""

from __future__ import annotations

from collections.abc import Iterable

from chatplane.protocol import wire
from chatplane.protocol.records import InboxItem, from_pb
from chatplane.v1 import services_pb2 as spb


def deliveries(items: Iterable[InboxItem]) -> list[spb.Delivery]:
    return [spb.Delivery(user_id=i.user_id, entry=wire.inbox_entry(i)) for i in items]


message = from_pb  # protocol/records.py


def inbox_item(d: spb.Delivery) -> InboxItem:
    return InboxItem(user_id=d.user_id, inbox_seq=d.entry.inbox_seq, message=message(d.entry.message))
