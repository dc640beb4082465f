"""What the client core hands out: messages, send acks, and the events of
chatplane.protocol.clientsession (the SDK turns them into futures, the
messages() queue and sync/pull tasks). Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from chatplane.protocol.errors import RequestError
from chatplane.v1 import frames_pb2 as pb


@dataclass(frozen=True, slots=True)
class Message:
    conversation_id: str
    seq: int
    inbox_seq: int
    message_id: str
    sender: str
    sender_device: str
    text: str
    sent_at_ms: int
    cid: int = 0
    payload: bytes = b""
    content_type: str = "text"

    @property
    def sent_at(self) -> datetime:
        """When the server stored it (UTC)."""
        return datetime.fromtimestamp(self.sent_at_ms / 1000, tz=UTC)

    @classmethod
    def from_pb(cls, m: pb.Message, inbox_seq: int = 0) -> Message:
        return cls(m.conversation_id, m.seq, inbox_seq, m.message_id, m.sender, m.sender_device,
                   m.text, m.sent_at_ms, m.cid, m.payload, m.content_type or "text")


@dataclass(frozen=True, slots=True)
class Ack:
    conversation_id: str
    seq: int
    message_id: str
    cid: int
    duplicate: bool = False


# -- events ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoggedIn:
    ack: pb.LoginAck
    store_reset: bool  # the server's store is not the one the cursor counted in


@dataclass(frozen=True, slots=True)
class Delivered:
    messages: list[Message]  # in order, each once


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    frame: pb.Frame  # the answer, or an Error frame: see `error`

    @property
    def error(self) -> RequestError | None:
        if self.frame.WhichOneof("body") != "error":
            return None
        e = self.frame.error
        return RequestError(e.code, e.message, e.retriable and not e.fatal)


@dataclass(frozen=True, slots=True)
class SendDone:
    cid: int
    ack: Ack | None
    error: RequestError | None


@dataclass(frozen=True, slots=True)
class SyncNeeded:
    """Pull the inbox from the cursor (a gap, a hint, or a new login)."""


@dataclass(frozen=True, slots=True)
class PullNeeded:
    """Pull `order.wants` from history (a conversation's gap)."""


@dataclass(frozen=True, slots=True)
class Ended:
    """The connection is over: close the link. `error` set: the server
    refused or closed with it (TERMINAL codes end the client)."""
    reason: str
    error: RequestError | None = None


Event = LoggedIn | Delivered | Reply | SendDone | SyncNeeded | PullNeeded | Ended
