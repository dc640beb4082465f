"""Client-side inbox cursor: exactly once and in order from pushes and syncs.

Entries arrive by push (live, possibly duplicated or early after a loss) and by
sync (pulled pages). The cursor drops anything at or below what it holds,
buffers what is early, and releases entries only in contiguous inbox_seq
order. When something early waits on a missing entry, the owner pulls the gap
with a SyncRequest from `have`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class InboxCursor(Generic[T]):
    def __init__(self, have: int = 0, max_buffered: int = 10_000) -> None:
        self.have = have
        self.max_buffered = max_buffered
        self._early: dict[int, T] = {}
        self.duplicates = 0

    @property
    def gap(self) -> bool:
        """Entries wait on a missing one: pull from `have`."""
        return bool(self._early)

    def accept(self, seq: int, item: T) -> list[T]:
        """Take one entry; return what became deliverable, in order."""
        if seq <= self.have or seq in self._early:
            self.duplicates += 1
            return []
        if seq != self.have + 1:
            if len(self._early) < self.max_buffered:
                self._early[seq] = item
            return []  # over the buffer: dropped here, sync brings it again
        ready = [item]
        self.have = seq
        while self._early:
            nxt = self._early.pop(self.have + 1, None)
            if nxt is None:
                break
            ready.append(nxt)
            self.have += 1
        # anything left at or below `have` cannot exist; entries above wait
        return ready


class ConversationOrder(Generic[T]):
    """Per-conversation order on top of the inbox: the second rule of the client.

    Small conversations arrive complete through the inbox. Large groups (read
    diffusion) arrive by pushes and pulls, and a group that changed mode or a
    member that left and came back leaves seq ranges the inbox never carried.
    So every message passes here: delivered when it is the next seq of its
    conversation, dropped when already delivered, otherwise held while the
    owner pulls the range (`wants`: conversation -> after_seq) from history.

    Where a conversation starts for this device: the first message the inbox
    brings (a join event, seq 1 of a 1:1), or a start the server named (sync
    deltas: joined_seq - 1). Pushes alone never start a conversation.
    """

    def __init__(self, max_held: int = 10_000) -> None:
        self.last: dict[str, int] = {}
        self.heads: dict[str, int] = {}  # known heads of large groups
        self.large: set[str] = set()
        self.wants: dict[str, int] = {}  # conversation -> pull after this seq
        self._held: dict[str, dict[int, T]] = {}
        self.max_held = max_held
        self.duplicates = 0

    def start(self, conversation_id: str, before_seq: int) -> list[T]:
        """The device starts the conversation after `before_seq` (if it has
        not started it yet); returns what became deliverable."""
        if conversation_id in self.last:
            return []
        self.last[conversation_id] = before_seq
        return self._drain(conversation_id)

    def offer(self, conversation_id: str, seq: int, item: T, *, from_inbox: bool) -> list[T]:
        last = self.last.get(conversation_id)
        if last is None:
            if not from_inbox:
                self._hold(conversation_id, seq, item)
                return []
            last = self.last[conversation_id] = seq - 1
        if seq <= last:
            self.duplicates += 1
            return []
        self._hold(conversation_id, seq, item)
        return self._drain(conversation_id)

    def saw_head(self, conversation_id: str, head_seq: int) -> None:
        """A large group's head (push notice or sync): pull up to it."""
        self.large.add(conversation_id)
        self.heads[conversation_id] = max(self.heads.get(conversation_id, 0), head_seq)
        last = self.last.get(conversation_id)
        if last is not None and last < self.heads[conversation_id]:
            self.wants[conversation_id] = last

    def pulled(self, conversation_id: str, seqs_and_items: list[tuple[int, T]]) -> list[T]:
        """The result of pulling after wants[conversation_id] (ascending).
        Seqs the server skipped are not visible to this member: jump them."""
        after = self.wants.pop(conversation_id, None)
        last = self.last.get(conversation_id)
        if last is None:
            return []
        if seqs_and_items and seqs_and_items[0][0] > last + 1:
            self.last[conversation_id] = last = seqs_and_items[0][0] - 1
        elif not seqs_and_items:
            held = self._held.get(conversation_id)
            if held and after is not None and min(held) > last + 1:
                self.last[conversation_id] = min(held) - 1
        out: list[T] = []
        for seq, item in seqs_and_items:
            if seq > self.last[conversation_id]:
                self._hold(conversation_id, seq, item)
        out += self._drain(conversation_id)
        head = self.heads.get(conversation_id, 0)
        if seqs_and_items and self.last[conversation_id] < head:
            self.wants[conversation_id] = self.last[conversation_id]
        return out

    def _hold(self, conversation_id: str, seq: int, item: T) -> None:
        held = self._held.setdefault(conversation_id, {})
        if len(held) < self.max_held or seq in held:
            held[seq] = item

    def _drain(self, conversation_id: str) -> list[T]:
        held = self._held.get(conversation_id)
        last = self.last[conversation_id]
        out: list[T] = []
        if not held:
            if last >= self.heads.get(conversation_id, 0):
                self.wants.pop(conversation_id, None)
            return out
        for seq in [s for s in held if s <= last]:
            del held[seq]
            self.duplicates += 1
        while last + 1 in held:
            last += 1
            out.append(held.pop(last))
        self.last[conversation_id] = last
        if held:
            self.wants[conversation_id] = last  # a gap below what is held: pull it
        else:
            del self._held[conversation_id]
            if last >= self.heads.get(conversation_id, 0):
                self.wants.pop(conversation_id, None)  # caught up: nothing to pull
        return out


SHARED_INBOXES = "regions/"  # prefix of the id of an inbox sequence linked regions share


def shared_inboxes_id(cluster: str, regions: Sequence[str]) -> str:
    """The store id (LoginAck.store_id) every region of a set linked with user homes
    answers: a user's inbox seqs are common to them (docs/architecture.md, "User
    homes"), so a device moving between them keeps its cursor. Another set of regions
    (one added or removed) is another id: its devices start over, as for another store.
    A digest, so it stays within Login.store_id's bound (64 bytes)."""
    named = "\n".join([cluster, *sorted(regions)]).encode()
    return SHARED_INBOXES + hashlib.sha256(named).hexdigest()[:32]


def shared_inboxes(store_id: str) -> bool:
    return store_id.startswith(SHARED_INBOXES)


def resume_cursor(have: int, held_store: str, ack_store: str, inbox_head: int) -> tuple[int, str]:
    """The resume decision after a LoginAck: (have to keep, store_id to keep).

    `have` was counted in `held_store`. Another store named by the server
    (wiped, or restored from elsewhere), or an inbox head below `have`, means
    the cursor counts nothing there: start over from 0. Shared vectors:
    tests/vectors/resume.json (the JS SDK passes the same).
    """
    other_store = bool(held_store and ack_store and ack_store != held_store)
    if other_store or inbox_head < have:
        have = 0
    return have, ack_store or held_store
