"""Reads: what a user may fetch, from its inbox and from conversations' timelines.

Sync pages a user's inbox (and the large groups' deltas, which have no inbox
entries); history pages a conversation within the seqs the user may see
(`visible_range`); the head checks answer the gateways. Nothing here writes:
the hot tier (im/hotcache.py), which sequencing fills, serves what it holds,
storage the rest. In `sync` durability across regions, nothing this region sequenced
as home and no peer confirmed yet is served (regions/unconfirmed.py): a region taking
the home over would give its seq to another message.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from chatplane.im.hotcache import HotCache
from chatplane.im.membership import Membership, not_member, unavailable
from chatplane.regions.unconfirmed import Unconfirmed
from chatplane.settings import Limits
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import (
    GROUP,
    ConversationSummary,
    InboxItem,
    Storage,
    StorageUnavailable,
    StoredMessage,
)


class Reads:
    def __init__(self, storage: Storage, membership: Membership, hot: HotCache, limits: Limits,
                 social: SocialSettings) -> None:
        self.storage = storage
        self.membership = membership
        self.hot = hot
        self.limits = limits
        self.social = social
        # regions linked with user homes: the id of the inbox sequence they share
        # (delivery.sync.shared_inboxes_id), which LoginAck names instead of the store's
        self.shared_inboxes = ""
        # regions in sync durability: what reads must not serve yet (None: no limit)
        self.unconfirmed: Unconfirmed | None = None

    @property
    def store_id(self) -> str:
        """The id inbox seqs count in (LoginAck.store_id): the storage's, or the one
        the linked regions share (user homes make a user's inbox seqs common)."""
        return self.shared_inboxes or self.storage.store_id

    async def _held_back(self) -> Unconfirmed | None:
        """The index of what may not be served yet (rebuilt from the log before the
        first read after a start), or None when reads have no limit."""
        unconfirmed = self.unconfirmed
        if unconfirmed is None or not unconfirmed.active:
            return None
        try:
            await unconfirmed.ready()
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        await unconfirmed.settled()  # called after the read's query: its rows are indexed
        return unconfirmed

    async def _seq_cap(self, conversation_id: str) -> int | None:
        unconfirmed = await self._held_back()
        return None if unconfirmed is None else unconfirmed.seq_cap(conversation_id)

    async def sync(self, user_id: str, after_seq: int, limit: int) -> tuple[list[InboxItem], int]:
        limit = max(1, min(limit or self.limits.max_sync_page, self.limits.max_sync_page))
        try:
            items = await self.storage.inbox(user_id, after_seq, limit + 1)
            head = await self.storage.inbox_head(user_id)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        unconfirmed = await self._held_back()
        if unconfirmed is not None:
            return unconfirmed.inbox_page(user_id, after_seq, items, head)
        return items, head

    async def inbox_head(self, user_id: str) -> int:
        try:
            return await self.storage.inbox_head(user_id)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc

    async def group_heads(self, conversation_ids: Sequence[str]) -> dict[str, int]:
        """Each conversation's highest seq (the gateways' head check of large
        groups); absent conversations count 0."""
        async def head(conversation_id: str) -> int:
            newest = await self.storage.history(conversation_id, before_seq=None, after_seq=None,
                                                limit=1)
            found = max(self.hot.head(conversation_id), newest[-1].seq if newest else 0)
            cap = await self._seq_cap(conversation_id)
            return found if cap is None else min(found, cap)

        ids = list(dict.fromkeys(conversation_ids))
        try:
            found = await asyncio.gather(*(head(c) for c in ids))
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        return dict(zip(ids, found, strict=True))

    async def visible_range(self, user_id: str, conversation_id: str) -> tuple[int, int]:
        """The seqs the user may read: (lowest, highest or 0 for "up to the
        head"). Group members see from their join; former members up to their
        leave (so a removed member can still fetch what it missed before the
        removal); strangers nothing (FORBIDDEN)."""
        membership = self.membership
        conversation = await membership.conversation_or_forbidden(user_id, conversation_id)
        if conversation.kind != GROUP:
            if not membership.is_member(conversation, user_id):
                raise not_member(user_id, conversation_id)
            return 1, 0
        span = await membership.span(user_id, conversation_id)
        if span is None:
            raise not_member(user_id, conversation_id)
        joined, left = span
        if left == 0 and not membership.is_member(conversation, user_id):
            raise not_member(user_id, conversation_id)
        return max(joined, 1), left

    async def history(
        self,
        user_id: str,
        conversation_id: str,
        before_seq: int,
        after_seq: int,
        limit: int,
    ) -> tuple[list[StoredMessage], int, bool]:
        lowest, highest = await self.visible_range(user_id, conversation_id)
        limit = max(1, min(limit or 50, self.limits.max_history_page))
        before = before_seq or None
        cap = await self._seq_cap(conversation_id)
        if cap is not None:  # unconfirmed past it: as if the head were there
            if cap < lowest:
                return [], cap, False
            highest = min(highest, cap) if highest else cap
        if highest:
            before = min(before or highest + 1, highest + 1)
        head = self.hot.head(conversation_id)
        cached = self.membership.peek(conversation_id)
        if cached is not None:  # a lower bound of the head: any version will do
            head = max(head, cached.head_seq)
        if cap is not None:
            head = min(head, cap)
        if after_seq:  # oldest first from a cursor: what clients pull to fill gaps
            messages = await self._page_after(conversation_id, max(after_seq, lowest - 1),
                                              limit + 1, before)
            messages, head = await self._below_cap(conversation_id, messages, head)
            has_more = len(messages) > limit
            return messages[:limit], max(head, messages[-1].seq if messages else 0), has_more
        try:  # newest first below `before`, above the floor
            messages = await self.storage.history(conversation_id, before_seq=before,
                                                  after_seq=None, limit=limit + 1)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        has_more = len(messages) > limit
        if has_more:
            messages = messages[1:]
        messages, head = await self._below_cap(conversation_id, messages, head)
        if lowest > 1 and messages and messages[0].seq <= lowest:
            messages = [m for m in messages if m.seq >= lowest]
            has_more = False
        return messages, max(head, messages[-1].seq if messages else 0), has_more

    async def _below_cap(self, conversation_id: str, messages: list[StoredMessage],
                         head: int) -> tuple[list[StoredMessage], int]:
        """A page read from the store without what was appended unconfirmed meanwhile
        (the cap asked before the query did not know it yet)."""
        cap = await self._seq_cap(conversation_id)
        if cap is None:
            return messages, head
        return [m for m in messages if m.seq <= cap], min(head, cap)

    async def _page_after(self, conversation_id: str, after: int, limit: int,
                          before: int | None) -> list[StoredMessage]:
        messages = self.hot.after(conversation_id, after, limit, before)
        if messages:
            return messages
        try:  # a miss, or empty, which may mean "appended by another instance"
            return await self.storage.history(conversation_id, before_seq=before, after_seq=after,
                                              limit=limit)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc

    async def group_deltas(self, user_id: str,
                           cursors: dict[str, int]) -> list[tuple[str, int, int, list[StoredMessage], bool]]:
        """For sync: each large group of the user with the messages after the
        client's cursor (or after joining), a bounded page each."""
        try:
            groups = await self.storage.large_groups_of(user_id,
                                                      self.social.large_group_threshold)
        except StorageUnavailable as exc:
            raise unavailable(exc) from exc
        deltas = []
        budget = self.limits.max_sync_page
        for conversation_id, head, joined in groups:
            cap = await self._seq_cap(conversation_id)
            if cap is not None:
                head = min(head, cap)
            after = max(cursors.get(conversation_id, 0), joined - 1)
            page: list[StoredMessage] = []
            if after < head and budget > 0:
                page = await self._page_after(conversation_id, after,
                                              min(budget, self.limits.max_history_page),
                                              None if cap is None else cap + 1)
                page, head = await self._below_cap(conversation_id, page, head)
                budget -= len(page)
            last = page[-1].seq if page else after
            deltas.append((conversation_id, head, joined, page, last < head))
        return deltas

    async def conversations(self, rows: list[ConversationSummary]) -> list[ConversationSummary]:
        """A conversation list page as the store answered it, with what may not be served
        yet left out: the head, the unread count and the last message stop at the cap
        (a storage read per capped conversation: only while a peer has not confirmed)."""
        unconfirmed = await self._held_back()
        if unconfirmed is None:
            return rows
        out = []
        for row in rows:
            cap = unconfirmed.seq_cap(row.conversation_id)
            if cap is not None and row.head_seq > cap:
                try:
                    newest = await self.storage.history(row.conversation_id, before_seq=cap + 1,
                                                        after_seq=None, limit=1)
                except StorageUnavailable as exc:
                    raise unavailable(exc) from exc
                row = dataclasses.replace(
                    row, head_seq=cap, unread=max(0, row.unread - (row.head_seq - cap)),
                    last_message=newest[-1] if newest else None)
            out.append(row)
        return out
