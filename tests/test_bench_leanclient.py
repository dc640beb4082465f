"""The lean bench client keeps both of the client's rules (docs/protocol.md): an
entry at or below its inbox cursor is dropped, and so is a second inbox entry of a
message it delivered (counted apart, for the report); and it pulls a gap in its inbox
as the SDK does, instead of acking over it."""

from __future__ import annotations

import asyncio
import struct

from chatplane.bench.leanclient import LeanClient
from chatplane.protocol import wire
from chatplane.protocol.records import InboxItem, StoredMessage
from chatplane.v1 import frames_pb2 as pb


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


class _Written(asyncio.Transport):
    """What the client writes, as frames."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[pb.Frame] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        while data:
            (length,) = struct.unpack_from(">I", data)
            self.frames.append(pb.Frame.FromString(data[4:4 + length]))
            data = data[4 + length:]


def _sync_page(entries: list[InboxItem], head: int) -> bytes:
    frame = pb.Frame(id=2**63, sync_response=pb.SyncResponse(inbox_head=head))
    frame.sync_response.entries.extend(pb.Frame.FromString(wire.push_frame(entries)).push.entries)
    payload = frame.SerializeToString()
    return struct.pack(">I", len(payload)) + payload


async def test_a_gap_in_the_inbox_is_pulled_not_acked_over() -> None:
    """A push lost between the tiers leaves a gap: the entries past it are not taken
    (nor acked); the client pulls from its cursor and delivers in inbox order. Before,
    it acked over the gap and the checker counted the message lost."""
    client = LeanClient("127.0.0.1", 1, "token")
    written = _Written()
    client.connection_made(written)
    client.data_received(_framed([InboxItem("b", 1, _message(1))]))
    client.data_received(_framed([InboxItem("b", 3, _message(3))]))  # inbox_seq 2 lost
    await asyncio.sleep(0)
    asks = [f.sync for f in written.frames if f.WhichOneof("body") == "sync"]
    assert [a.after_inbox_seq for a in asks] == [1]
    assert [f.push_ack.inbox_seq for f in written.frames if f.WhichOneof("body") == "push_ack"] == [1]
    client.data_received(_sync_page([InboxItem("b", 2, _message(2)), InboxItem("b", 3, _message(3))], 3))
    delivered = []
    async for message in client.messages():
        delivered.append(message.seq)
        if len(delivered) == 3:
            break
    assert delivered == [1, 2, 3] and client.inbox_seq == 3 and client.synced == 2
    # a SyncHint past the cursor (the gateway's head check) asks again
    written.frames.clear()
    client.data_received(_hint(5))
    await asyncio.sleep(0)
    assert [f.sync.after_inbox_seq for f in written.frames if f.WhichOneof("body") == "sync"] == [3]


def _hint(head: int) -> bytes:
    payload = pb.Frame(sync_hint=pb.SyncHint(inbox_head=head)).SerializeToString()
    return struct.pack(">I", len(payload)) + payload
