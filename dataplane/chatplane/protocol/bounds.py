"""Bounds on every value a client or a peer tier may send: the one table.

A frame that decodes is not yet a request the server can serve: protobuf
takes a uint64 of 2**64 - 1, storage keeps signed 64-bit integers, and a
page limit of 4 billion or a list of a million members is work nobody should
be able to ask for. `problem(kind, body, bounds)` checks one request body
against `RULES` (the table docs/protocol.md prints) and names the first field
out of bounds: "field send.cid: above 2^63-1". Callers turn that into
`INVALID_ARGUMENT` (or a `BoundsError`) at the edge, before im or storage
sees the value: the gateway's session (`protocol/session.py`) for clients;
`Im.Handle` (`im.requests.admit`), `Im.AppendEvent`, `Im.InboxHeads`,
`Im.GroupHeads` and `Region.Hello` for calls from another tier or region
(`CALL_RULES`, `call_problem`).

Limits that depend on settings (text size, page sizes) come from `Bounds`,
built from `settings.Limits`; the rest are constants here, used by the
services too (group names, notes, users per operation). Numbers in admin
JSON bodies are read by `protocol/jsonbounds.py` against the same constants.
No I/O here: the rules are tested and fuzzed without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.records import ID_PATTERN, valid_id

if TYPE_CHECKING:
    from chatplane.settings import Limits

STORED_INT_MAX = 2**63 - 1  # SQLite and CQL keep signed 64-bit integers
STORED_INT_MIN = -(2**63)
MAX_ID_BYTES = 64  # user and device ids (storage.base.ID_PATTERN)
# the longest id the server makes: "d:<user>:<user>" (a 1:1 conversation)
MAX_CONVERSATION_ID_BYTES = len("d:") + MAX_ID_BYTES + len(":") + MAX_ID_BYTES
MAX_TOKEN_BYTES = 4096
MAX_CLIENT_NAME_BYTES = 256
MAX_STORE_ID_BYTES = 64
MAX_CONTENT_TYPE_BYTES = 128
MAX_NOTE_CHARS = 256  # a friend request's note
MAX_GROUP_NAME_CHARS = 128
MAX_USERS_PER_OP = 1000  # members of one GroupCreate / user_ids of one GroupOp
MAX_SYNC_CURSORS = 10_000  # large-group cursors in one SyncRequest
MAX_HEADS_PER_CALL = 10_000  # ids in one Im.InboxHeads / Im.GroupHeads call
# sends of one device per Im.HandleSends call (the gateway batches at most this many)
MAX_SENDS_PER_CALL = 256
MAX_LANES_PER_CALL = 64  # lanes (a device's sends into one conversation) in one Im.HandleSendLanes
MAX_FANOUT_ENTRIES = 256  # messages in one Im.FanOut call
MAX_FANOUTS_PER_CALL = 64  # conversations in one Im.FanOutMany call
MAX_MESSAGE_ID_BYTES = 64
MAX_DEVICE_BYTES = 256  # a device as im sees it: a client's, or an instance's event device
MAX_EVENT_PAYLOAD_BYTES = 64 * 1024
MAX_NONCE_BYTES = 64  # a peer region's Hello challenge
MAX_REGION_BYTES = 253  # a region or cluster name (a DNS name at most)
ROLES = ("", "owner", "admin", "member")


class BoundsError(ProtocolError):
    """A value out of its bounds: always INVALID_ARGUMENT, never fatal."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(ErrorCode.INVALID_ARGUMENT, f"field {field}: {why}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Bounds:
    """The limits that come from settings (`Limits`: text, history and sync
    pages; defaults = its defaults) and the fixed page maxima."""

    max_text_bytes: int = 16 * 1024
    max_history_page: int = 200
    max_sync_page: int = 500
    max_members_page: int = 5000
    max_receipts_page: int = 10_000
    max_conversations_page: int = 200

    @classmethod
    def from_limits(cls, limits: Limits) -> Bounds:
        return cls(max_text_bytes=limits.max_text_bytes,
                   max_history_page=limits.max_history_page,
                   max_sync_page=limits.max_sync_page)


class Rule(Protocol):
    @property
    def field(self) -> str:
        """The protobuf field (or JSON key) the rule reads."""

    def check(self, value: Any, bounds: Bounds) -> str | None:
        """Why `value` is out of bounds (None: it is fine)."""

    def describe(self, bounds: Bounds) -> str:
        """The bound in words, for docs/protocol.md."""


@dataclass(frozen=True, slots=True)
class Int:
    """An integer field: uint64 fields stop at 2^63-1 (what storage keeps)."""

    field: str
    low: int = 0
    high: int = STORED_INT_MAX

    def check(self, value: Any, bounds: Bounds) -> str | None:
        if value > self.high:
            return "above 2^63-1" if self.high == STORED_INT_MAX else f"above {self.high}"
        if value < self.low:
            return f"below {self.low}"
        return None

    def describe(self, bounds: Bounds) -> str:
        high = "2^63-1" if self.high == STORED_INT_MAX else str(self.high)
        low = "-2^63" if self.low == STORED_INT_MIN else str(self.low)
        return f"{low} .. {high}"


@dataclass(frozen=True, slots=True)
class Limit:
    """A page size: 0 asks for the server's default page, else 1 .. the max."""

    field: str
    setting: str  # the Bounds attribute (settings.Limits field) with the max

    def check(self, value: Any, bounds: Bounds) -> str | None:
        high = getattr(bounds, self.setting)
        return f"above {high}" if value > high else None

    def describe(self, bounds: Bounds) -> str:
        return f"0 (the default page) or 1 .. {getattr(bounds, self.setting)}"


@dataclass(frozen=True, slots=True)
class Text:
    """A string of at most `high` UTF-8 bytes (or characters, for names and
    notes), or a bytes field of at most `high` bytes."""

    field: str
    high: int | str  # a number, or the Bounds attribute that holds it
    chars: bool = False

    def check(self, value: Any, bounds: Bounds) -> str | None:
        high = self.high if isinstance(self.high, int) else getattr(bounds, self.high)
        size = len(value)
        if size * 4 <= high:  # fits whatever it holds: UTF-8 takes at most 4 bytes a character
            return None
        if not self.chars and not isinstance(value, bytes):
            size = len(value.encode())
        unit = "characters" if self.chars else "bytes"
        return f"{size} {unit}, over {high}" if size > high else None

    def describe(self, bounds: Bounds) -> str:
        high = self.high if isinstance(self.high, int) else getattr(bounds, self.high)
        return f"at most {high} {'characters' if self.chars else 'bytes'}"


@dataclass(frozen=True, slots=True)
class UserId:
    """A user id: 1-64 of A-Z a-z 0-9 _ . @ - (empty allowed only when optional)."""

    field: str
    optional: bool = False

    def check(self, value: Any, bounds: Bounds) -> str | None:
        if self.optional and value == "":
            return None
        return None if valid_id(value) else f"not a user id ({ID_PATTERN.pattern})"

    def describe(self, bounds: Bounds) -> str:
        return "a user id: 1-64 of `A-Z a-z 0-9 _ . @ -`" + (", or empty" if self.optional else "")


@dataclass(frozen=True, slots=True)
class ConversationId:
    field: str
    optional: bool = False

    def check(self, value: Any, bounds: Bounds) -> str | None:
        if value == "":
            return None if self.optional else "empty"
        if len(value) * 4 <= MAX_CONVERSATION_ID_BYTES:  # fits, however it is encoded
            return None
        size = len(value.encode())
        return f"{size} bytes, over {MAX_CONVERSATION_ID_BYTES}" if size > MAX_CONVERSATION_ID_BYTES else None

    def describe(self, bounds: Bounds) -> str:
        optional = ", or empty" if self.optional else ", not empty"
        return f"at most {MAX_CONVERSATION_ID_BYTES} bytes{optional}"


@dataclass(frozen=True, slots=True)
class OneOf:
    """An enum or a closed set of strings."""

    field: str
    allowed: tuple[Any, ...]
    names: str  # how the docs name the allowed values

    def check(self, value: Any, bounds: Bounds) -> str | None:
        return None if value in self.allowed else f"{value!r} is not one of {self.names}"

    def describe(self, bounds: Bounds) -> str:
        return self.names


@dataclass(frozen=True, slots=True)
class UserIds:
    """A repeated user id field: at most `high` ids, each a user id."""

    field: str
    high: int = MAX_USERS_PER_OP

    def check(self, value: Any, bounds: Bounds) -> str | None:
        if len(value) > self.high:
            return f"{len(value)} ids, over {self.high}"
        for i, user in enumerate(value):
            if not valid_id(user):
                return f"[{i}] not a user id ({ID_PATTERN.pattern})"
        return None

    def describe(self, bounds: Bounds) -> str:
        return f"at most {self.high} user ids"


@dataclass(frozen=True, slots=True)
class Repeated:
    """A repeated message field: at most `high` items, each checked by `rules`."""

    field: str
    high: int
    rules: tuple[Rule, ...]

    def check(self, value: Any, bounds: Bounds) -> str | None:
        if len(value) > self.high:
            return f"{len(value)} items, over {self.high}"
        for i, item in enumerate(value):
            for rule in self.rules:
                why = rule.check(getattr(item, rule.field), bounds)
                if why is not None:
                    return f"[{i}].{rule.field}: {why}"
        return None

    def describe(self, bounds: Bounds) -> str:
        inner = "; ".join(f"`{r.field}` {r.describe(bounds)}" for r in self.rules)
        return f"at most {self.high} items" + (f"; each {inner}" if inner else "")


# The FriendAction / GroupAction values a client may send (0 is "unspecified").
FRIEND_ACTIONS = tuple(range(1, 7))
GROUP_ACTIONS = tuple(range(1, 10))

# Every field of every frame a client sends, by the Frame oneof name. A kind
# with no rules has no field a bound applies to (heartbeat: its int64 is echoed).
RULES: dict[str, tuple[Rule, ...]] = {
    "login": (Text("token", MAX_TOKEN_BYTES), Int("inbox_seq"),
              Text("client_name", MAX_CLIENT_NAME_BYTES), Text("store_id", MAX_STORE_ID_BYTES)),
    "send": (ConversationId("conversation_id"), Int("cid", low=1),
             Text("text", "max_text_bytes"), Text("content_type", MAX_CONTENT_TYPE_BYTES)),
    "push_ack": (Int("inbox_seq"),),
    "sync": (Int("after_inbox_seq"), Limit("limit", "max_sync_page"),
             Repeated("conversations", MAX_SYNC_CURSORS,
                      (ConversationId("conversation_id"), Int("seq")))),
    "history": (ConversationId("conversation_id"), Int("before_seq"), Int("after_seq"),
                Limit("limit", "max_history_page")),
    "heartbeat": (),
    "open_direct": (UserId("peer_user_id"),),
    "friend_op": (OneOf("action", FRIEND_ACTIONS, "REQUEST .. UNBLOCK (1-6)"), UserId("user_id"),
                  Text("note", MAX_NOTE_CHARS, chars=True)),
    "friends": (),
    "group_create": (Text("name", MAX_GROUP_NAME_CHARS, chars=True), UserIds("members"),
                     Int("cid")),  # 0: no idempotency key
    "group_op": (ConversationId("conversation_id"),
                 OneOf("action", GROUP_ACTIONS, "INVITE .. DECLINE_INVITATION (1-9)"), UserIds("user_ids"),
                 OneOf("role", ROLES, '"", "owner", "admin", "member"'),
                 Text("name", MAX_GROUP_NAME_CHARS, chars=True)),
    "members": (ConversationId("conversation_id"), Text("after_user_id", MAX_ID_BYTES),
                Limit("limit", "max_members_page")),
    "conversations": (Int("before_activity_ms"), ConversationId("before_id", optional=True),
                      Limit("limit", "max_conversations_page")),
    "mark_read": (ConversationId("conversation_id"), Int("seq")),
    "receipts": (ConversationId("conversation_id"), Int("seq", low=1),
                 Text("after_user_id", MAX_ID_BYTES), Limit("limit", "max_receipts_page")),
    "invitations": (),
}


def problem(kind: str, body: Any, bounds: Bounds) -> str | None:
    """The first field of a `kind` request out of bounds, as "field kind.name:
    why"; None when every field is in bounds (or the kind has no rules)."""
    for rule in RULES.get(kind, ()):
        why = rule.check(getattr(body, rule.field), bounds)
        if why is not None:
            return f"field {kind}.{rule.field}: {why}"
    return None


# The fields of the gRPC calls another tier makes to im (`Im.*`), checked at
# the im tier's server like a client's frame at the gateway.
CALL_RULES: dict[str, tuple[Rule, ...]] = {
    "handle": (Text("user_id", MAX_ID_BYTES), Text("device_id", MAX_DEVICE_BYTES)),
    "handle_sends": (Text("user_id", MAX_ID_BYTES), Text("device_id", MAX_DEVICE_BYTES),
                     Repeated("frames", MAX_SENDS_PER_CALL, ())),
    "handle_send_lanes": (Repeated("lanes", MAX_LANES_PER_CALL, (
        Text("user_id", MAX_ID_BYTES), Text("device_id", MAX_DEVICE_BYTES),
        Repeated("frames", MAX_SENDS_PER_CALL, ()))),),
    "append_event": (UserId("user_id"), Text("device", MAX_DEVICE_BYTES), Int("cid", low=1),
                     Text("message_id", MAX_MESSAGE_ID_BYTES), Int("sent_at_ms"),
                     Text("content_type", MAX_CONTENT_TYPE_BYTES),
                     Text("payload", MAX_EVENT_PAYLOAD_BYTES)),
    "inbox_heads": (UserIds("user_ids", MAX_HEADS_PER_CALL),),
    # im -> im: a batch of one conversation's messages (im/inboxes.py: 64 at
    # most), each with the users of a group (10,000+ members) owned there
    "fan_out": (ConversationId("conversation_id"),
                Repeated("entries", MAX_FANOUT_ENTRIES,
                         (Int("seq", low=1), UserIds("user_ids", MAX_HEADS_PER_CALL)))),
    "fan_out_many": (Repeated("requests", MAX_FANOUTS_PER_CALL, (
        ConversationId("conversation_id"),
        Repeated("entries", MAX_FANOUT_ENTRIES,
                 (Int("seq", low=1), UserIds("user_ids", MAX_HEADS_PER_CALL))))),),
    "group_heads": (Repeated("conversation_ids", MAX_HEADS_PER_CALL, ()),),
    "hello": (Text("region", MAX_REGION_BYTES), Text("cluster", MAX_REGION_BYTES),
              Text("nonce", MAX_NONCE_BYTES)),
    # region -> region (regions/homes.py): a home offer, a forwarded client send
    "offer_home": (Text("region", MAX_REGION_BYTES), Text("kind", MAX_REGION_BYTES),
                   ConversationId("key"), Text("home", MAX_REGION_BYTES)),
    "forwarded_send": (Text("region", MAX_REGION_BYTES), UserId("user_id"),
                       Text("device_id", MAX_DEVICE_BYTES), ConversationId("conversation_id"),
                       Int("cid", low=1), Text("content_type", MAX_CONTENT_TYPE_BYTES)),
    # a forwarded group change: its `op` is checked as a client's group_op frame
    "forwarded_group_op": (Text("region", MAX_REGION_BYTES), UserId("user_id"),
                           Text("device_id", MAX_DEVICE_BYTES)),
    # a forwarded friend change: its `op` is checked as a client's friend_op frame
    "forwarded_friend_op": (Text("region", MAX_REGION_BYTES), UserId("user_id"),
                            Text("device_id", MAX_DEVICE_BYTES)),
    "forwarded_admin_change": (Text("region", MAX_REGION_BYTES),
                               ConversationId("conversation_id"), UserIds("add"),
                               UserIds("remove")),
    # region -> region (regions/replication.py): a follower's cursor in this region's log
    # (past the log's head is refused there: nothing can have been applied beyond it)
    "replicate": (Text("region", MAX_REGION_BYTES), Int("after", low=0)),
    "applied": (Text("region", MAX_REGION_BYTES), Int("applied_to", low=0)),
    # region -> region (regions/notices.py): a follower's cursor in this region's notices
    "notify": (Text("region", MAX_REGION_BYTES), Int("after", low=0),
               Text("stream", MAX_REGION_BYTES)),
    # region -> region (regions/moving.py): an admin move of a home
    "hand_off": (Text("region", MAX_REGION_BYTES), Text("kind", MAX_REGION_BYTES),
                 ConversationId("key")),
    # region -> region (regions/fencing.py): a takeover of a lost region with three or more
    "fence": (Text("region", MAX_REGION_BYTES), Text("lost", MAX_REGION_BYTES)),
}


def call_problem(call: str, request: Any) -> str | None:
    """`problem` for a gRPC request of `CALL_RULES`."""
    for rule in CALL_RULES[call]:
        why = rule.check(getattr(request, rule.field), Bounds())
        if why is not None:
            return f"field {call}.{rule.field}: {why}"
    return None


def table(bounds: Bounds) -> list[tuple[str, str]]:
    """(field, bound) for every rule: the table of docs/protocol.md."""
    return [(f"{kind}.{rule.field}", rule.describe(bounds))
            for kind, rules in RULES.items() for rule in rules]
