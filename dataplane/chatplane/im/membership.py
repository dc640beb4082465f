"""Membership: who is in which conversation, as the im keeps it in memory.

The conversations (with their members), the member lists (with roles and join
seqs) and each group member's span of seqs (join to leave), read from storage
and cached, every entry versioned against changes made through any instance
(im/invalidation.py, docs/caches.md). Sending (im/sequencing.py), reading
(im/reads.py), friends (im/social.py) and groups (im/groups.py) ask here; the
writes that change membership go through `changing`, so every instance drops
what it cached.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

from prometheus_client.metrics_core import Metric

from chatplane.im.invalidation import Unannounced, Versions
from chatplane.im.membercache import MemberCache
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import (
    Conversation,
    Member,
    Storage,
    StorageUnavailable,
    valid_id,
)

# member ids the caches of conversations and of member lists (with roles) hold:
# about 660,000 1:1 chats, or 200 groups of 10,000
CONVERSATION_CACHE_IDS = 2_000_000
MEMBER_LIST_CACHE_IDS = 200_000
SCAN_MEMBERS = 64  # above: membership is looked up in a set (Membership.is_member)
MAX_SPANS = 200_000


def not_member(user_id: str, conversation_id: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, f"{user_id} is not a member of {conversation_id!r}")


def unavailable(exc: Exception) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAVAILABLE, f"storage unavailable, retry: {exc}")


class Membership:
    def __init__(self, storage: Storage, versions: Versions, clock_ms: Callable[[], int],
                 social: SocialSettings) -> None:
        self.storage = storage
        self.versions = versions
        self.clock_ms = clock_ms
        self.social = social
        # (stamp, conversation) and (stamp, members), hot ones kept (im/membercache.py)
        self._conversations: MemberCache[tuple[str, Conversation]] = MemberCache(
            "conversation", CONVERSATION_CACHE_IDS)
        # big groups' members as a set, keyed by the members tuple it was made from
        self._member_sets: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {}
        self._member_lists: MemberCache[tuple[str, list[Member]]] = MemberCache(
            "member_list", MEMBER_LIST_CACHE_IDS)
        # (user, group) -> (stamp, (joined seq, left seq or 0))
        self._spans: dict[tuple[str, str], tuple[str, tuple[int, int]]] = {}
        versions.on("members", self.forget_members, self.forget_all)
        versions.on("settings", self.forget_members, self.forget_all)

    def families(self) -> Iterator[Metric]:
        yield from self._conversations.families()
        yield from self._member_lists.families()

    # -- conversations ---------------------------------------------------------

    def _conversation_valid(self, conversation_id: str, stamp: str) -> bool:
        return (self.versions.valid("members", conversation_id, stamp)
                and self.versions.valid("settings", conversation_id, stamp))

    def cached_conversation(self, conversation_id: str) -> Conversation | None:
        """The cached entry, if its version is still good (im/invalidation.py)."""
        cached = self._conversations.get(
            conversation_id, lambda entry: self._conversation_valid(conversation_id, entry[0]))
        return None if cached is None else cached[1]

    def peek(self, conversation_id: str) -> Conversation | None:
        """The cached entry whatever its version (a lower bound of its head),
        not counted as an access."""
        cached = self._conversations.peek(conversation_id)
        return None if cached is None else cached[1]

    def _cache_conversation(self, stamp: str, conversation: Conversation) -> None:
        self._conversations.put(conversation.conversation_id, (stamp, conversation),
                                len(conversation.members))

    async def conversation(self, conversation_id: str, *, fresh: bool = False) -> Conversation:
        """A conversation with its members; cached, versioned against changes
        made through any instance (im/invalidation.py), re-read when `fresh`."""
        conversation = None if fresh else self.cached_conversation(conversation_id)
        if conversation is None:
            stamp = self.versions.stamp()  # before the read: a change during it voids it
            try:
                conversation = await self.storage.conversation(conversation_id)
            except StorageUnavailable as exc:
                raise unavailable(exc) from exc
            if conversation is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no conversation {conversation_id!r}")
            self._cache_conversation(stamp, conversation)
        return conversation

    async def conversation_or_forbidden(self, user_id: str, conversation_id: str) -> Conversation:
        try:
            return await self.conversation(conversation_id)
        except ProtocolError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                raise not_member(user_id, conversation_id) from exc
            raise

    async def open_direct(self, user_id: str, peer_user_id: str) -> Conversation:
        if not valid_id(peer_user_id):
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"invalid user id {peer_user_id!r}")
        if self.social.direct_requires_friendship and peer_user_id != user_id:
            relation = await self.storage.relation(user_id, peer_user_id)
            if not relation.friend:
                raise ProtocolError(ErrorCode.FORBIDDEN, f"{user_id} and {peer_user_id} are not friends")
        stamp = self.versions.stamp()
        try:
            conversation = await self.storage.ensure_direct(user_id, peer_user_id, self.clock_ms())
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        self._cache_conversation(stamp, conversation)
        return conversation

    # -- members ---------------------------------------------------------------

    def is_member(self, conversation: Conversation, user_id: str) -> bool:
        """`user_id in conversation.members`, without scanning 10,000 ids at
        every send into a large group (a set per members tuple: a re-read
        conversation, with new members, gets a new one)."""
        members = conversation.members
        if len(members) <= SCAN_MEMBERS:
            return user_id in members
        cached = self._member_sets.get(conversation.conversation_id)
        if cached is None or cached[0] is not members:
            if len(self._member_sets) > 256:
                self._member_sets.clear()
            cached = self._member_sets[conversation.conversation_id] = (members, frozenset(members))
        return user_id in cached[1]

    async def member_list(self, conversation_id: str) -> list[Member]:
        """Members with roles and join seqs, cached like `conversation`."""
        cached = self._member_lists.get(
            conversation_id, lambda entry: self.versions.valid("members", conversation_id, entry[0]))
        if cached is not None:
            return cached[1]
        stamp = self.versions.stamp()
        members = await self.storage.members(conversation_id)
        self._member_lists.put(conversation_id, (stamp, members), len(members))
        return members

    async def require_member(self, user_id: str, conversation_id: str, *,
                             fresh: bool = False) -> Conversation:
        try:
            conversation = await self.conversation(conversation_id, fresh=fresh)
        except ProtocolError as exc:
            if exc.code is ErrorCode.NOT_FOUND:  # do not tell strangers what exists
                raise ProtocolError(
                    ErrorCode.FORBIDDEN, f"{user_id} is not a member of {conversation_id!r}"
                ) from exc
            raise
        if not self.is_member(conversation, user_id):
            if not fresh:  # cached before the user joined (through another instance)?
                return await self.require_member(user_id, conversation_id, fresh=True)
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"{user_id} is not a member of {conversation_id!r}"
            )
        return conversation

    async def span(self, user_id: str, conversation_id: str) -> tuple[int, int] | None:
        """A group member's (joined seq, left seq or 0), None for a stranger;
        cached, versioned like the members."""
        key = (user_id, conversation_id)
        cached = self._spans.get(key)
        if cached is not None and self.versions.valid("members", conversation_id, cached[0]):
            return cached[1]
        stamp = self.versions.stamp()
        try:
            found = await self.storage.membership_span(user_id, conversation_id)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        if found is None:
            return None
        self._spans[key] = (stamp, found)
        while len(self._spans) > MAX_SPANS:
            self._spans.pop(next(iter(self._spans)))
        return found

    # -- changes ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def changing(self, kind: str, key: str) -> AsyncIterator[None]:
        """Around a storage write that changes what instances cache: announced
        before it (refused, retriable, if that cannot be) and after it,
        whatever it did (im/invalidation.py)."""
        try:
            await self.versions.begin(kind, key)
        except Unannounced as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, f"{exc}; retry") from exc
        try:
            yield
        finally:
            await self.versions.end(kind, key)

    def forget_members(self, conversation_id: str) -> None:
        self._conversations.pop(conversation_id)
        self._member_lists.pop(conversation_id)
        self._member_sets.pop(conversation_id, None)

    def forget_spans(self, conversation_id: str, users: Iterable[str] | None = None) -> None:
        """The spans of `users` in the group (None: of every user)."""
        if users is None:
            for key in [k for k in self._spans if k[1] == conversation_id]:
                del self._spans[key]
            return
        for user in users:
            self._spans.pop((user, conversation_id), None)

    def forget_conversation(self, conversation_id: str) -> None:
        """Everything cached of one conversation's membership (its lease moved)."""
        self.forget_members(conversation_id)
        if not conversation_id.startswith(("d:", "u:")):  # spans are kept for groups only
            self.forget_spans(conversation_id)

    def forget_all(self) -> None:
        """Announcements were missed for good (im/invalidation.py, `flush`)."""
        self._conversations.clear()
        self._member_lists.clear()
        self._member_sets.clear()
        self._spans.clear()
