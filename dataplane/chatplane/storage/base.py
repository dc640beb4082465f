"""The storage interface every backend implements (embedded SQLite, ScyllaDB).

The tiers never talk to a database directly: they call a `Storage`. One
conformance suite (tests/storage/) runs unchanged against every backend, so a
behaviour the tiers rely on is written down there, not in a backend.

Two sequences live here, both contiguous and both never reused:
- a conversation's `seq` (1, 2, 3 ...): the order every member sees;
- a user's `inbox_seq` (1, 2, 3 ...): one entry per message the user must
  receive (write diffusion), so each device syncs everything with one cursor.
`append` allocates both atomically with the message, so a message is durable
before anybody hears of it, and a resend (same sender, device and cid) returns
the original result instead of a second message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# User and device ids: what an app's backend can name safely in URLs and keys.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

DIRECT = "direct"
GROUP = "group"


class StorageError(Exception):
    """Base of storage failures the tiers may see."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached now; the operation did not happen (or its
    outcome is unknown and a retry with the same cid is safe)."""


class ConversationNotFound(StorageError):
    pass


def valid_id(value: str) -> bool:
    return bool(ID_PATTERN.match(value))


def direct_conversation_id(a: str, b: str) -> str:
    """The one 1:1 conversation between two users, whichever opens it."""
    lo, hi = sorted((a, b))
    return f"d:{lo}:{hi}"


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


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A message to sequence. `message_id` and `sent_at_ms` are chosen by the
    caller; on a duplicate the stored (original) ones win."""

    conversation_id: str
    sender: str
    sender_device: str
    cid: int
    text: str
    message_id: str
    sent_at_ms: int
    payload: bytes = b""
    content_type: str = "text"


@dataclass(frozen=True, slots=True)
class AppendResult:
    message: StoredMessage
    duplicate: bool
    # One entry per recipient, in the order given; empty for a duplicate (the
    # original append already delivered them).
    inbox: tuple[InboxItem, ...] = ()


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    kind: str
    members: tuple[str, ...]
    head_seq: int
    created_at_ms: int
    extra: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Storage(Protocol):
    """What the tiers need from storage. All methods are coroutines and never
    block the event loop; every write is durable when it returns."""

    name: str

    async def open(self) -> None:
        """Connect and check the schema; raise StorageError with a clear
        message when the backend is unusable (bad config fails at start)."""

    async def close(self) -> None: ...

    async def ensure_direct(self, a: str, b: str, now_ms: int) -> Conversation:
        """The 1:1 conversation of a and b, created on first use."""

    async def conversation(self, conversation_id: str) -> Conversation | None: ...

    async def append(self, request: SendRequest, recipients: Sequence[str]) -> AppendResult:
        """Sequence and store one message, and append it to each recipient's
        inbox, atomically. Idempotent on (conversation, sender, device, cid).
        Raises ConversationNotFound, StorageUnavailable."""

    async def inbox(self, user_id: str, after_seq: int, limit: int) -> list[InboxItem]:
        """Inbox entries with inbox_seq > after_seq, ascending, at most limit."""

    async def inbox_head(self, user_id: str) -> int:
        """The user's highest inbox_seq (0 when empty)."""

    async def history(
        self,
        conversation_id: str,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int = 50,
    ) -> list[StoredMessage]:
        """A page of the timeline, ascending. With after_seq: the oldest
        `limit` with seq > after_seq (and < before_seq if given). Without: the
        newest `limit` with seq < before_seq (or up to the head)."""

    async def put_user(self, user_id: str, display_name: str, now_ms: int) -> None: ...

    async def get_user(self, user_id: str) -> dict[str, str] | None: ...
