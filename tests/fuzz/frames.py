"""Hypothesis strategies: well-formed client frames of every kind, with the
values that break servers (0, 1, 2^63-1, 2^63, 2^64-1, the most negative
int64, empty and maximal strings and one byte more, long member lists,
unknown and foreign conversation ids).

A strategy draws a `Draft`: the frame kind and its field values, where a
conversation may be `Known(i)`, one the run has learnt (the ordinary pair's
chat, groups the attackers made, event conversations), resolved when the
frame is built, since ids exist only once the server made them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from chatplane.protocol.bounds import (
    MAX_CONVERSATION_ID_BYTES,
    MAX_GROUP_NAME_CHARS,
    MAX_ID_BYTES,
    MAX_NOTE_CHARS,
    MAX_USERS_PER_OP,
)
from chatplane.v1 import frames_pb2 as pb

MAX_TEXT_BYTES = 16 * 1024  # settings.Limits' default, which the fuzz node keeps

U64_EDGES = [0, 1, 2, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 2, 2**63 - 1, 2**63,
             2**63 + 1, 2**64 - 2, 2**64 - 1]
U32_EDGES = [0, 1, 2, 50, 199, 200, 201, 499, 500, 501, 1000, 5000, 5001, 10_000, 10_001,
             2**31, 2**32 - 1]
I64_EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**62, 2**63 - 1]

u64 = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, 2**64 - 1))
u32 = st.one_of(st.sampled_from(U32_EDGES), st.integers(0, 2**32 - 1))
i64 = st.one_of(st.sampled_from(I64_EDGES), st.integers(-(2**63), 2**63 - 1))

USERS = ["alice", "bob", "mallory", "trudy", "eve", "nobody", "a" * MAX_ID_BYTES]
BAD_USERS = ["", "a" * (MAX_ID_BYTES + 1), "sp ace", "ünï", "x:y", "nul\x00", "a/b"]
user_id = st.one_of(st.sampled_from(USERS), st.sampled_from(BAD_USERS),
                    st.from_regex(r"[A-Za-z0-9_.@-]{1,64}", fullmatch=True), st.text(max_size=8))


@dataclass(frozen=True)
class Known:
    """The i-th conversation the run knows of (modulo how many it knows)."""

    index: int


CONVERSATION_LITERALS = ["", "g:missing", "d:alice:bob", "d:eve:mallory", "u:alice", "u:mallory",
                         "x" * MAX_CONVERSATION_ID_BYTES, "x" * (MAX_CONVERSATION_ID_BYTES + 1),
                         "g:" + "f" * 1000]
conversation = st.one_of(st.builds(Known, st.integers(0, 63)),
                         st.sampled_from(CONVERSATION_LITERALS), st.text(max_size=12))

TEXTS = ["", "hi", "x" * MAX_TEXT_BYTES, "x" * (MAX_TEXT_BYTES + 1), "é" * (MAX_TEXT_BYTES // 2),
         "é" * (MAX_TEXT_BYTES // 2 + 1)]
text = st.one_of(st.sampled_from(TEXTS), st.text(max_size=40))


def sized(limit: int, fill: str = "n") -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["", fill * limit, fill * (limit + 1)]), st.text(max_size=20))


BIG_LISTS = [[f"u{i}" for i in range(65)], [f"u{i}" for i in range(MAX_USERS_PER_OP)],
             [f"u{i}" for i in range(MAX_USERS_PER_OP + 1)], ["alice"] * (MAX_USERS_PER_OP + 1)]
members = st.one_of(st.lists(user_id, max_size=12), st.sampled_from(BIG_LISTS))
cursors = st.lists(st.builds(lambda c, s: (c, s), conversation, u64), max_size=6)
content_type = st.sampled_from(["", "text", "system/group", "event/friend", "c" * 128, "c" * 129])


@dataclass(frozen=True)
class Draft:
    kind: str
    fields: dict[str, Any]

    def build(self, known: list[str]) -> pb.Frame:
        """The frame, with `Known` conversations resolved against `known`."""
        def resolve(value: Any) -> Any:
            if isinstance(value, Known):
                return known[value.index % len(known)] if known else ""
            return value

        values = {name: resolve(value) for name, value in self.fields.items()}
        if self.kind == "sync":
            values["conversations"] = [pb.ConversationCursor(conversation_id=resolve(c), seq=s)
                                       for c, s in values["conversations"]]
        body_type = type(getattr(pb.Frame(), self.kind))
        frame = pb.Frame()
        getattr(frame, self.kind).CopyFrom(body_type(**values))
        return frame


def draft(kind: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Draft]:
    return st.fixed_dictionaries(fields).map(lambda values: Draft(kind, values))


KINDS: dict[str, st.SearchStrategy[Draft]] = {
    "send": draft("send", conversation_id=conversation, cid=u64, text=text,
                  payload=st.sampled_from([b"", b"\x00" * 64]), content_type=content_type),
    "push_ack": draft("push_ack", inbox_seq=u64),
    "sync": draft("sync", after_inbox_seq=u64, limit=u32, conversations=cursors),
    "history": draft("history", conversation_id=conversation, before_seq=u64, after_seq=u64,
                     limit=u32),
    "heartbeat": draft("heartbeat", client_time_ms=i64),
    "open_direct": draft("open_direct", peer_user_id=user_id),
    "friend_op": draft("friend_op", action=st.integers(0, 9), user_id=user_id,
                       note=sized(MAX_NOTE_CHARS)),
    "friends": draft("friends"),
    "group_create": draft("group_create", name=sized(MAX_GROUP_NAME_CHARS, "g"), members=members),
    "group_op": draft("group_op", conversation_id=conversation, action=st.integers(0, 11),
                      user_ids=members,
                      role=st.sampled_from(["", "owner", "admin", "member", "god", "x" * 100]),
                      name=sized(MAX_GROUP_NAME_CHARS, "g")),
    "members": draft("members", conversation_id=conversation, after_user_id=sized(MAX_ID_BYTES),
                     limit=u32),
    "conversations": draft("conversations", before_activity_ms=i64,
                           before_id=st.one_of(st.just(""), conversation), limit=u32),
    "mark_read": draft("mark_read", conversation_id=conversation, seq=u64),
    "receipts": draft("receipts", conversation_id=conversation, seq=u64,
                      after_user_id=sized(MAX_ID_BYTES), limit=u32),
    # not client requests: UNKNOWN_FRAME, and a second login: ALREADY_LOGGED_IN
    "login": draft("login", protocol_version=st.just(1), token=st.just("x"), inbox_seq=u64),
    "send_ack": draft("send_ack", seq=u64),
}

any_frame = st.one_of(*KINDS.values())

# A Login on a fresh connection: the extremes of its own fields.
login_fields = st.fixed_dictionaries({
    "inbox_seq": u64,
    "client_name": sized(256, "c"),
    "store_id": sized(64, "s"),
})
