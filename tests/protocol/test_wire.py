"""The push frame written by hand (protocol/wire.py) is byte for byte what
protobuf makes of the same Frame, and decodes back to the same entries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatplane.protocol import wire
from chatplane.protocol.records import InboxItem, StoredMessage, from_pb, to_pb
from chatplane.v1 import frames_pb2 as pb

U64 = st.integers(min_value=0, max_value=2**64 - 1)
I64 = st.integers(min_value=0, max_value=2**63 - 1)
messages = st.builds(
    StoredMessage, conversation_id=st.text(max_size=80), seq=U64, message_id=st.text(max_size=40),
    sender=st.text(max_size=64), sender_device=st.text(max_size=64), cid=U64,
    text=st.text(max_size=300), sent_at_ms=I64, payload=st.binary(max_size=300),
    content_type=st.text(max_size=20))
items = st.builds(InboxItem, user_id=st.text(max_size=10), inbox_seq=U64, message=messages)


def by_protobuf(entries: list[InboxItem]) -> bytes:
    return pb.Frame(push=pb.Push(entries=[
        pb.InboxEntry(inbox_seq=i.inbox_seq, message=to_pb(i.message)) for i in entries
    ])).SerializeToString()


@given(st.lists(items, max_size=6))
def test_push_frame_is_what_protobuf_writes(entries: list[InboxItem]) -> None:
    assert wire.push_frame(entries) == by_protobuf(entries)


@given(messages, st.lists(U64, min_size=1, max_size=4))
def test_a_message_encoded_once_serves_every_push(message: StoredMessage,
                                                  seqs: list[int]) -> None:
    encoded: wire.Encoded = {}
    frames = [wire.push_frame([InboxItem("u", seq, message)], encoded) for seq in seqs]
    assert list(encoded) == [(message.conversation_id, message.seq)]
    for seq, frame in zip(seqs, frames, strict=True):
        decoded = pb.Frame.FromString(frame)
        [entry] = decoded.push.entries
        assert entry.inbox_seq == seq and from_pb(entry.message) == message
