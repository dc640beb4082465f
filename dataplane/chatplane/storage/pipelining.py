"""One device's sends into one conversation, stored in cid order without a commit each.

A device pipelines sends (up to its window) and their seqs must follow its cids. The
im tier used to store each before it started the next, so a lane of k queued sends paid
k group commits one after the other: with a slow fsync (78 ms at load on this machine)
a pipelining device got at most ~13 msgs/s and its latency grew to seconds.

A storage whose appends take effect in the order they were queued (SQLite's single
writer thread) lets the caller start the next send as soon as this one is queued:
`PipelinedSend` is set in the context of one send's handling (im/requests.py
`handle_sends`); the storage's `append` of exactly that send (conversation, sender,
device and cid match: an event appended on the way is not it) fills `queued` and
`ticket`, and refuses the append, unstored and retriable, when the previous send's
ticket (`after`) failed to store: the device resends from the failed cid, so nothing
it sent later may hold a seq before it. A storage that cannot promise the order
ignores it, and the caller waits for each send to finish, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any

from chatplane.storage.base import SendRequest


@dataclass(slots=True, eq=False)
class PipelinedSend:
    """One pipelined send: what the storage fills in once its append is queued."""

    conversation_id: str
    sender: str
    sender_device: str
    cid: int
    queued: asyncio.Future[None]  # done once queued in order (or the send finished)
    after: Any = None  # the previous send's ticket: its failure refuses this one
    ticket: Any = None  # this append's, for the next send's `after`

    def covers(self, request: SendRequest) -> bool:
        return (request.cid == self.cid and request.sender_device == self.sender_device
                and request.sender == self.sender
                and request.conversation_id == self.conversation_id)

    def finished(self, _: object) -> None:
        """The send's handling ended (queued or not): the next may start."""
        self.mark_queued(self.ticket)

    def mark_queued(self, ticket: Any) -> None:
        self.ticket = ticket
        if not self.queued.done():
            self.queued.set_result(None)


PIPELINED: contextvars.ContextVar[PipelinedSend | None] = contextvars.ContextVar(
    "pipelined_send", default=None)


def pipelined(request: SendRequest) -> PipelinedSend | None:
    """The pipelining of `request` in this context, if it is the send being pipelined."""
    send = PIPELINED.get()
    return send if send is not None and send.covers(request) else None

