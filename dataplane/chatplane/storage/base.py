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

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from prometheus_client.metrics_core import Metric

# The message records and the id rule are shared with the wire and the
# tiers (protocol/records.py); storage's callers keep importing them here.
from chatplane.protocol.records import ID_PATTERN as ID_PATTERN
from chatplane.protocol.records import InboxItem as InboxItem
from chatplane.protocol.records import StoredMessage as StoredMessage
from chatplane.protocol.records import valid_id as valid_id

DIRECT = "direct"
GROUP = "group"
EVENTS = "events"  # a user's own event conversation "u:<user>" (friends, reads, receipts)

OWNER = "owner"
ADMIN = "admin"
MEMBER = "member"
ROLES = (OWNER, ADMIN, MEMBER)


class StorageError(Exception):
    """Base of storage failures the tiers may see."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached now; the operation did not happen (or its
    outcome is unknown and a retry with the same cid is safe)."""


class LogTrimmed(StorageError):
    """A read of the replicated log from a position already trimmed (every peer had
    applied it): the reader would miss entries, so it must resync another way."""

    def __init__(self, after: int, trimmed_to: int) -> None:
        super().__init__(f"log position {after} was trimmed (entries up to {trimmed_to}"
                         " are gone): the reader must resync from a snapshot")
        self.after, self.trimmed_to = after, trimmed_to


class NotStoredYet(StorageError):
    """A replicated inbox entry names a message this store does not hold yet: another
    region's, whose log has not brought it here yet."""


class LogBlocked(StorageError):
    """`apply_log` stored a batch only up to `applied_to` (the peer's cursor moved
    there, `items` are the inbox entries written): the next entry names a message of a
    third region's log not stored here yet. The rest is read again; never waiting for
    the whole batch keeps two logs whose batches name each other's messages moving."""

    def __init__(self, reason: str, items: list[InboxItem], applied_to: int) -> None:
        super().__init__(reason)
        self.items, self.applied_to = items, applied_to


class ConversationNotFound(StorageError):
    pass


class Fenced(StorageError):
    """The append carried a lease epoch that is no longer the conversation's:
    another instance took the conversation over (`acquire`). Nothing was
    written; the caller must stop sequencing the conversation."""


def direct_conversation_id(a: str, b: str) -> str:
    """The one 1:1 conversation between two users, whichever opens it."""
    lo, hi = sorted((a, b))
    return f"d:{lo}:{hi}"


def events_conversation_id(user_id: str) -> str:
    return f"u:{user_id}"


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
    # The sequencing lease epoch the caller holds (from `acquire`), checked
    # where the seq is claimed; None: unfenced (one process owns everything).
    fence: int | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    message: StoredMessage
    duplicate: bool
    # One entry per recipient written now, in the order given; empty for a
    # duplicate (the original append already delivered them).
    inbox: tuple[InboxItem, ...] = ()
    # Recipients whose entries were not written (not among `inboxes`): the
    # caller has them written by `fan_out`, then calls `fanned_out`.
    owed: tuple[str, ...] = ()
    # The replicated log's head as the append's transaction committed (ReplicatedLog:
    # at or past the message's own entry, or its original's for a duplicate; the
    # position `sync` durability waits for a peer to pass). 0: no log.
    log_position: int = 0


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    kind: str
    members: tuple[str, ...]
    head_seq: int
    created_at_ms: int
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    role: str
    joined_seq: int


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """A group change, applied atomically with the system message recording it.

    `create` makes the conversation (kind group) first. Added users join at the
    event's seq (they receive it and everything after); removed users receive
    the event, then nothing more. `roles` sets roles of current members."""

    create: bool = False
    name: str | None = None
    add: tuple[tuple[str, str], ...] = ()  # (user, role)
    remove: tuple[str, ...] = ()
    roles: tuple[tuple[str, str], ...] = ()
    dissolve: bool = False


@dataclass(frozen=True, slots=True)
class Relation:
    """How `user_id` stands with `other` (one direction of a pair)."""

    friend: bool = False
    request_sent: bool = False
    request_received: bool = False
    note: str = ""
    blocked: bool = False  # user_id blocks other
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    conversation_id: str
    kind: str
    name: str
    members: int
    head_seq: int
    read_seq: int
    unread: int
    last_activity_ms: int
    last_message: StoredMessage | None


# What a home region sequences (docs/architecture.md, "Regions"): a conversation's seq,
# or a user's inbox_seq.
CONVERSATION_HOME = "conversation"
USER_HOME = "user"
HOME_KINDS = (CONVERSATION_HOME, USER_HOME)


@dataclass(frozen=True, slots=True)
class Home:
    """The region that sequences a conversation (or a user's inbox), at `epoch`.
    A region proposes itself unconfirmed, and sequences only once every peer has
    taken the proposal and it is `confirmed` (regions/homes.py)."""

    region: str
    epoch: int
    confirmed: bool = False


def home_replaces(existing: Home | None, offered: Home) -> bool:
    """Whether a store keeps `offered` over its `existing` row (`Storage.offer_home`):
    a higher epoch always; at the same epoch, the same region only to confirm it, and
    another region only over an unconfirmed row, when its name sorts first (so two
    regions proposing at once end with the same winner in every store) or when it is
    confirmed (every store took it: the unconfirmed row is a proposal that lost)."""
    if existing is None or offered.epoch > existing.epoch:
        return True
    if offered.epoch < existing.epoch:
        return False
    if offered.region == existing.region:
        return offered.confirmed and not existing.confirmed
    return not existing.confirmed and (offered.confirmed or offered.region < existing.region)


ANY = "*"  # a revocation's user_id or device_id that matches every one


@dataclass(frozen=True, slots=True)
class Revocation:
    """Tokens of `user_id` on `device_id` issued before `before_ms` are revoked
    (`ANY` for every user or every device; auth.Identity.issued_at_ms)."""

    user_id: str
    device_id: str
    before_ms: int


Recovered = Callable[[StoredMessage, Sequence[str], Sequence[str]], None]


@runtime_checkable
class SharedKeyspace(Protocol):
    """A store several regions share (CQL: two datacenters of one keyspace; the
    database copies the rows): each region writes the inbox entries of its own users
    only (docs/architecture.md, "Regions on CQL")."""

    def serve_users(self, users_here: Callable[[Sequence[str]], Awaitable[list[str]]],
                    recovered: Recovered | None = None) -> None:
        """The recipients whose entries this process may write, as `users_here` keeps;
        `recovered(message, recipients, here)` is called when a take finishes a message
        an earlier append left half done (its rows rewritten, its entries for `here`
        written), before anything later is appended to its conversation: the peers are
        told of it in seq order."""


@runtime_checkable
class Storage(Protocol):
    """What the tiers need from storage. All methods are coroutines and never
    block the event loop; every write is durable when it returns."""

    name: str
    # Chosen at random when the store was created and kept with its data:
    # inbox seqs count in one store, so a device whose cursor came from
    # another store_id (the store was wiped, or restored from elsewhere)
    # must start over. Set by open().
    store_id: str

    async def open(self) -> None:
        """Connect and check the schema; raise StorageError with a clear
        message when the backend is unusable (bad config fails at start)."""

    async def close(self) -> None: ...

    def families(self) -> Iterable[Metric]:
        """The backend's own figures, for /metrics (chatplane.metrics; none when it keeps
        none): read when scraped, never counted per call in prometheus_client."""

    def health(self) -> list[str]:
        """What keeps the store from serving now, one line each ([] when fine):
        /readyz lists them (chatplane.supervision)."""

    async def ensure_direct(self, a: str, b: str, now_ms: int) -> Conversation:
        """The 1:1 conversation of a and b, created on first use."""

    async def conversation(self, conversation_id: str) -> Conversation | None: ...

    async def acquire(self, conversation_id: str, owner: str) -> int:
        """Take the conversation's sequencing lease: raise its epoch by one
        (a conditional write, so two takers get two epochs) and return it.
        From then on an append fenced with an older epoch raises Fenced.
        Works before the conversation exists (a group about to be created)."""

    async def append(self, request: SendRequest, recipients: Sequence[str],
                     inboxes: Collection[str] | None = None) -> AppendResult:
        """Sequence and store one message, and append it to each recipient's
        inbox, atomically. Recipients are distinct user ids (callers pass each
        once). Idempotent on (conversation, sender, device, cid). With
        `request.fence`, the seq is claimed only while that epoch is the
        conversation's lease epoch, in the same transaction (or LWT) as the
        claim. Raises ConversationNotFound, StorageUnavailable, Fenced.

        `inboxes`: write entries now only for the recipients in it (in a
        cluster, the users whose inboxes this instance sequences); the others
        are returned as `owed`. The message stays unfinished until
        `fanned_out`: a later taker of the conversation may finish it."""

    async def fan_out(self, conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]],
                      fresh: Collection[int] = ()) -> list[InboxItem]:
        """The inbox entries of stored messages, (seq, users) ascending by
        seq: found when written before, else written now, each inbox's in seq
        order. Idempotent, except for the seqs in `fresh`: entries nobody was
        asked for before, written without looking for an earlier one (the
        look is a read per entry; on CQL a scan of the inbox's recent rows).
        Raises StorageUnavailable, also for a seq it cannot read (the entries
        before it may be written: a retry finds them); an unseen message is
        never taken for one with nothing to fan out."""

    async def fanned_out(self, conversation_id: str, seqs: Sequence[int]) -> None:
        """Every recipient of these messages has its entry: they are finished
        (a taker of the conversation need not look at them)."""

    async def unfinished(self, conversation_id: str) -> list[tuple[int, tuple[str, ...]]]:
        """(seq, users) ascending, covering every message of the conversation
        stored with entries owed and not `fanned_out` yet (the users owed, or
        more): the conversation's new owner fans them out again before its
        first append. It may name recent messages that are finished (CQL: a
        done mark waits for the next batch); fanning out finds their entries."""

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

    # -- social layer --------------------------------------------------------

    async def ensure_events(self, user_id: str, now_ms: int) -> Conversation:
        """The user's own event conversation "u:<user>" (members: the user)."""

    async def apply_membership(self, conversation_id: str, change: MembershipChange,
                               event: SendRequest,
                               recipients: Sequence[str] | None = None,
                               inboxes: Collection[str] | None = None) -> AppendResult:
        """Apply a group change and append `event` (a system message) atomically.
        The event goes to the inboxes of `recipients`, by default the members
        before and after the change (a removed member sees its removal);
        `inboxes` as in append (recipients not in it are `owed`).
        Idempotent on the event's cid like append. Raises ConversationNotFound
        (no such group, unless change.create)."""

    async def members(self, conversation_id: str) -> list[Member]:
        """Current members, sorted by user id (empty for an unknown id)."""

    async def mark_read(self, user_id: str, conversation_id: str, seq: int,
                        *, dry_run: bool = False) -> tuple[int, int]:
        """Move the user's read position forward to min(seq, head); returns
        (previous, current). Never moves back. `dry_run`: what it would return,
        writing nothing."""

    async def read_positions(self, conversation_id: str) -> dict[str, int]:
        """user -> read_seq for the current members (0 when never read)."""

    async def conversations_of(self, user_id: str, limit: int,
                               before: tuple[int, str] | None = None) -> list[ConversationSummary]:
        """The user's conversations (not its events conversation), most recent
        activity first, after the (last_activity_ms, conversation_id) cursor.
        `unread` counts messages after read_seq that are neither the user's
        own nor system messages."""

    async def membership_span(self, user_id: str, conversation_id: str) -> tuple[int, int] | None:
        """(joined_seq, left_seq) of the user in the conversation, left_seq 0
        while a member; None if never a member."""

    async def large_groups_of(self, user_id: str, threshold: int) -> list[tuple[str, int, int]]:
        """(conversation_id, head_seq, joined_seq) of the groups the user is a
        member of that have more than `threshold` members (read diffusion)."""

    async def relation(self, user_id: str, other: str) -> Relation: ...

    async def put_relations(self, changes: Sequence[tuple[str, str, Relation]]) -> None:
        """Write (user, other, relation) rows together."""

    async def relations(self, user_id: str) -> list[tuple[str, Relation]]:
        """Every non-empty relation of the user, sorted by the other's id."""

    async def put_invitation(self, conversation_id: str, user_id: str, inviter: str,
                             now_ms: int) -> None: ...

    async def take_invitation(self, conversation_id: str, user_id: str) -> str | None:
        """Remove a pending invitation; the inviter, or None if there was none."""

    async def invitations(self, user_id: str) -> list[tuple[str, str, int]]:
        """The user's pending invitations as (conversation_id, inviter, at_ms),
        newest first."""

    async def get_user(self, user_id: str) -> dict[str, str] | None: ...

    async def put_revocation(self, revocation: Revocation) -> None:
        """Store a revocation; for the same (user, device) the latest
        `before_ms` wins (an older one written late never lowers it)."""

    async def revocations(self) -> list[Revocation]:
        """Every stored revocation (few: one row per revoked user or device)."""

    # -- home regions (docs/architecture.md, "Regions") -------------------------

    async def home(self, kind: str, key: str) -> Home | None:
        """The home region of a conversation or a user's inbox (`kind`: one of
        HOME_KINDS) as this store knows it; None when none was offered yet."""

    async def offer_home(self, kind: str, key: str, offered: Home) -> Home:
        """Keep `offered` if `home_replaces` the stored row (atomically: SQLite's
        transaction, a CQL conditional write), and return the row now stored."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One message of a home region's replicated log, at log position `lsn`."""

    lsn: int
    epoch: int  # the home epoch it was sequenced under
    message: StoredMessage
    # An inbox entry of a user homed in the log's region: (inbox_user, inbox_seq) names
    # `message` (its conversation_id and seq: the rest is left empty on the link).
    inbox_user: str = ""
    inbox_seq: int = 0


@dataclass(frozen=True, slots=True)
class LogExtent:
    """What the replicated log retains: the positions after `trimmed_to` up to `head`
    (positions are dense: AUTOINCREMENT, a rolled-back append takes none)."""

    trimmed_to: int  # every position at or below it is deleted (0: none)
    head: int  # the newest position (0: empty)

    @property
    def retained(self) -> int:
        return max(0, self.head - self.trimmed_to)


@runtime_checkable
class ReplicatedLog(Protocol):
    """The embedded store's replicated log (docs/architecture.md, "Regions"): what a
    home region sequenced, in commit order, read by peers from a position they keep
    in their own store, and applied there idempotently by (conversation, seq).
    SQLite only: a multi-datacenter keyspace replicates its data itself.

    With user homes, a user's inbox entries are written only in the user's home region
    (`serve_region`; until it is called every inbox is written here) and reach
    the others through its log as (user, inbox_seq) entries."""

    def serve_region(self, region: str) -> None:
        """Regions are linked and this store serves `region`: from now on it writes
        inbox entries only for users homed in it (or with no home row yet)."""

    async def log_after(self, after: int, limit: int, region: str) -> tuple[list[LogEntry], int, int]:
        """(entries, scanned_to, head): the log's entries after position `after` (at most
        `limit` positions looked at) of conversations whose confirmed home is `region`,
        ascending; the last position looked at (the reader's next `after`); the newest.
        LogTrimmed when positions after `after` were trimmed."""

    async def log_cursor(self, peer: str) -> int:
        """The log position of `peer` applied here last (0: none)."""

    async def log_head(self) -> int:
        """This store's newest log position (0: empty): every message committed
        before the call is at or below it (`sync` durability waits for a peer past it)."""

    async def log_extent(self) -> LogExtent:
        """What the log retains now."""

    async def trim_log(self, upto: int, limit: int) -> LogExtent:
        """Delete the entries at or below `upto` (never past the head), at most `limit`
        positions in one transaction, and remember how far: a read from below it
        raises LogTrimmed. Returns what the log retains after."""

    async def take_over_homes(self, lost: str, region: str,
                              behind: Mapping[tuple[str, str], int] | None = None) -> int:
        """Failover: every conversation and user homed in region `lost` is homed in `region`
        at its epoch + 1, confirmed (one transaction; returns how many), so this
        store's row beats the lost region's in every store (`home_replaces`). With
        `behind` (three regions or more: the least another survivor holds of each
        (kind, key), 0 when absent), what this store holds past it is logged again first,
        at new positions, so the survivors reading this log get it before the next seq
        given here. The entries a lost home owed are written only when `region` is the
        one this store serves (the taker's store, not one told of the takeover)."""

    async def home_heads(self, region: str) -> list[tuple[str, str, int]]:
        """(kind, key, head) of every conversation and user homed in `region` in this
        store: the newest seq stored, or the newest inbox_seq (0: none)."""

    async def apply_log(self, peer: str, entries: Sequence[LogEntry], scanned_to: int,
                        recipients: dict[str, tuple[str, ...]],
                        changes: Mapping[int, MembershipChange] | None = None,
                        large_above: int | None = None) -> list[InboxItem]:
        """Store `peer`'s entries (each conversation's next seq; one stored before is
        skipped, unless the entry's epoch is past the first and the stored one is
        another message: a lost home's, replaced; a hole raises StorageError and
        writes nothing) with inbox entries for
        `recipients[conversation]`, and move the peer's cursor to `scanned_to`, in one
        transaction. A conversation not in `recipients` is a group: `changes[lsn]` (its
        change events) is applied with its entry, at its seq (a creation makes the
        group), and each entry goes to the members before and after it, as the home
        wrote it; in a group over `large_above` members (None: no bound) only to those a
        change adds or removes (read diffusion). Entries of users homed in another region
        are not written here (their home's log brings them). An inbox entry of the log
        (`inbox_user` set) is stored at its (user, inbox_seq), the home's one replacing
        another stored there, skipped when stored before; one past the user's head + 1
        raises StorageError (no hole). An inbox entry naming a message not stored here
        yet (a third region's) ends the batch there: what precedes it is stored with
        the cursor moved to the position before it, and LogBlocked raised after the
        commit (a first entry that cannot be stored raises NotStoredYet, storing
        nothing). Returns the inbox entries written."""
