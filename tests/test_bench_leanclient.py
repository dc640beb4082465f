"""The lean bench client keeps both of the client's rules (docs/protocol.md): an
entry at or below its inbox cursor is dropped, and so is a second inbox entry of a
message it delivered (counted apart, for the report)."""

from __future__ import annotations

import asyncio
import struct

from chatplane.bench.leanclient import LeanClient
from chatplane.protocol import wire
from chatplane.protocol.records import InboxItem, StoredMessage


def _framed(items: list[InboxItem]) -> bytes:
    payload = wire.push_frame(items)
    return struct.pack(">I", len(payload)) + payload


def _message(seq: int) -> StoredMessage:
    return StoredMessage("d:a:b", seq, f"m{seq}", "a", "phone", seq, f"text {seq}", 1)


async def test_a_second_entry_of_a_message_is_dropped_and_counted() -> None:
    client = LeanClient("127.0.0.1", 1, "token")
    client.data_received(_framed([InboxItem("b", 1, _message(1)), InboxItem("b", 2, _message(2))]))
    # the same message 1 again under a later inbox_seq (a second entry), then a re-push
    # of inbox_seq 2 (below the cursor), then the next new message
    client.data_received(_framed([InboxItem("b", 3, _message(1))]))
    client.data_received(_framed([InboxItem("b", 2, _message(2)), InboxItem("b", 4, _message(3))]))
    delivered = []
    async for message in client.messages():
        delivered.append(message.seq)
        if len(delivered) == 3:
            break
    assert delivered == [1, 2, 3]
    assert client.duplicate_entries == 1
    assert client.inbox_seq == 4
    await asyncio.sleep(0)  # the scheduled PushAck flush finds no transport: nothing to write
