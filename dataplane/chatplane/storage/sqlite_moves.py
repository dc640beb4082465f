"""Admin moves of a user's home on SQLite (regions/user_moves.py): the old home's hold
on writing the user's inbox entries, and the new home's take of the user's rows with
the entries still owed, in one transaction each (the writer thread's).

While a user's inbox is held (`Writer.held_inboxes`), a message stored here records
the user's entry as owed (`inbox_owed`) instead of writing it, exactly as for a user
homed in another region: whichever region ends up the home writes it (the new home
from its own owed rows, or this one when the move is given up), so no entry is lost
and none is written twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chatplane.storage.base import CONVERSATION_HOME, USER_HOME, Home, InboxItem, home_replaces
from chatplane.storage.sqlite_writer import Writer, log_head


def _home(writer: Writer, kind: str, key: str) -> Home | None:
    row = writer.db.execute("SELECT region, epoch, confirmed FROM homes WHERE kind = ?"
                            " AND key = ?", (kind, key)).fetchone()
    return None if row is None else Home(str(row[0]), int(row[1]), bool(row[2]))


class _UserMoveMethods:
    """The user-move half of the SQLite store (`regions.user_moves.UserMoveStore`)."""

    _write: Any
    region: str

    async def hold_inbox(self, user_id: str) -> tuple[int, int]:
        """Stop writing `user_id`'s inbox entries here (recorded owed from now on);
        returns (log head, the user's inbox head) read after the hold, in the same
        transaction: every entry written here before is at or below that head."""
        def hold(writer: Writer) -> tuple[int, int]:
            writer.held_inboxes.add(user_id)
            writer.flush_rows()  # the batch's earlier entries are in the log before the read
            return log_head(writer.db), writer.inbox_head(user_id)

        held: tuple[int, int] = await self._write(hold)
        return held

    async def release_inbox(self, user_id: str) -> list[InboxItem]:
        """The move is over: write `user_id`'s entries here again when this store still
        homes the user (a move given up), the ones owed during the hold first; none when
        the user moved (the new home writes them). Returns the entries written."""
        def release(writer: Writer) -> list[InboxItem]:
            writer.held_inboxes.discard(user_id)
            writer.user_homes.pop(user_id, None)
            row = _home(writer, USER_HOME, user_id)
            if row is None or row.region != self.region:
                return []
            return writer.write_owed([user_id])

        items: list[InboxItem] = await self._write(release)
        return items

    async def take_user_home(self, user_id: str, taken: Home, inbox_head: int,
                             timelines: Sequence[str]) -> tuple[Home | None, list[InboxItem]]:
        """The new home's side: only when this store holds the user's inbox up to
        `inbox_head` (the old home's, read after its hold), the user's row becomes
        `taken` (if it replaces the stored one, `home_replaces`), each of `timelines`
        held here (the user's events and relations records) moves with it, and the
        entries owed here are written, in one transaction. Returns the user's row now
        stored (None: the inbox is behind, nothing taken) and the entries written."""
        def take(writer: Writer) -> tuple[Home | None, list[InboxItem]]:
            if writer.inbox_head(user_id) < inbox_head:
                return None, []
            existing = _home(writer, USER_HOME, user_id)
            if not home_replaces(existing, taken):
                assert existing is not None
                return existing, []
            db = writer.db
            db.execute("INSERT OR REPLACE INTO homes (kind, key, region, epoch, confirmed)"
                       " VALUES (?, ?, ?, ?, 1)", (USER_HOME, user_id, taken.region, taken.epoch))
            writer.user_homes.pop(user_id, None)
            for key in timelines:  # rows this store holds only: a timeline without one has
                db.execute("UPDATE homes SET region = ?, epoch = ?, confirmed = 1"  # no log yet
                           " WHERE kind = ? AND key = ? AND epoch < ?",
                           (taken.region, taken.epoch, CONVERSATION_HOME, key, taken.epoch))
            return taken, writer.write_owed([user_id])

        result: tuple[Home | None, list[InboxItem]] = await self._write(take)
        return result
