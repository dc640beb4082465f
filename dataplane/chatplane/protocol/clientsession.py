"""The client side of the protocol, as a state machine without I/O.

The SDK (client/client.py) opens a link, then drives this core: `login`,
`request`, `send`, frame payloads in through `receive`, the clock through
`tick`; bytes out through `data_to_send` and events through
`events_received`. Everything a device must get right lives here: the login
and the resume decision (delivery.sync.resume_cursor), request ids, pending
sends by cid (delivery.sends), cumulative acks batched over `ack_delay_s`,
heartbeats and the silent-server check, and the reconnect backoff. What
survives a reconnect (cursor, per-conversation order, pending sends, store
id) is kept; the rest is reset by `connection_lost`. The JS SDK mirrors it
(clients/js/src/core.ts); both pass tests/vectors/.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

from google.protobuf.message import DecodeError

from chatplane.delivery.dedup import CidAllocator
from chatplane.delivery.sends import Outcome, SendQueue
from chatplane.delivery.sync import ConversationOrder, InboxCursor, resume_cursor
from chatplane.protocol import wire
from chatplane.protocol.clientevents import (
    Ack,
    Delivered,
    Ended,
    Event,
    LoggedIn,
    Message,
    PullNeeded,
    Reply,
    SendDone,
    SyncNeeded,
)
from chatplane.protocol.errors import ErrorCode, RequestError
from chatplane.v1 import frames_pb2 as pb

log = logging.getLogger("chatplane.client")

ACK_DELAY_S = 0.01  # pushes gathered before one cumulative ack covers them all
STAYED_UP_S = 2.0  # a connection up this long starts the backoff over
# conversations whose seqs are the same in every region (1:1 chats, groups: one home
# sequences each); an inbox's seqs and events' are per store
COMMON_SEQS = ("d:", "g:")
# Errors after which reconnecting cannot help.
TERMINAL = frozenset({ErrorCode.AUTH_FAILED, ErrorCode.TOKEN_EXPIRED, ErrorCode.SESSION_REPLACED,
                      ErrorCode.UNSUPPORTED_VERSION, ErrorCode.TOKEN_REVOKED})


class Phase(Enum):
    OFFLINE = "offline"
    LOGGING_IN = "logging_in"
    ACTIVE = "active"


class Backoff:
    """Full-jitter exponential backoff (delays in seconds)."""

    def __init__(self, base_s: float = 0.1, max_s: float = 10.0) -> None:
        self.base_s, self.max_s, self.attempt = base_s, max_s, 0

    def next_delay(self, rand: float) -> float:
        self.attempt += 1
        return rand * min(self.max_s, self.base_s * 2 ** min(self.attempt, 10))

    def reset(self) -> None:
        self.attempt = 0


class ClientSession:
    def __init__(self, *, inbox_seq: int = 0, resume: dict[str, Any] | None = None,
                 max_frame_bytes: int = 64 * 1024, heartbeat_s: float | None = None,
                 backoff_max_s: float = 10.0, ack_delay_s: float = ACK_DELAY_S,
                 client_name: str = "chatplane-python",
                 rand: Callable[[], float] = random.random) -> None:
        self.cursor: InboxCursor[Message] = InboxCursor(inbox_seq)
        self.order: ConversationOrder[Message] = ConversationOrder()
        self.store_id = ""  # the server store the cursor counts in (LoginAck.store_id)
        self.region = ""  # the region of that store (LoginAck.region)
        if resume:  # what position() returned before: continue without replays
            self.store_id = str(resume.get("store_id", ""))
            self.region = str(resume.get("region", ""))
            self.cursor = InboxCursor(int(resume.get("inbox_seq", inbox_seq)))
            self.order.last.update({c: int(s) for c, s in resume.get("conversations", {}).items()})
            self.order.large.update(resume.get("large", ()))
        self.cids = CidAllocator()
        self.sends: SendQueue[pb.Send] = SendQueue()
        self.backoff = Backoff(max_s=backoff_max_s)
        self.heartbeat_s = heartbeat_s
        self._heartbeat_fixed = heartbeat_s is not None  # else each LoginAck's
        self.ack_delay_s = ack_delay_s
        self.client_name = client_name
        self.rand = rand
        self.server_max_frame = max_frame_bytes
        self.max_users_per_request = 1000
        self.user_id = self.device_id = ""
        self.inbox_head = 0
        self.store_resets = 0  # times the server's history was found behind this device
        self.send_retries = 0  # retriable refusals; each send retried with its cid
        self.last_send_error: RequestError | None = None
        self.phase = Phase.OFFLINE
        self._next_id = 0
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._reset_connection()

    def _reset_connection(self) -> None:
        self.phase = Phase.OFFLINE
        self._login_id = 0
        self._outstanding: set[int] = set()  # request ids awaiting a reply
        self._send_ids: dict[int, int] = {}  # request id -> cid
        self._acked_sent = 0
        self._ack_due: float | None = None
        self._beat_due: float | None = None
        self._last_frame = 0.0
        self._up_since: float | None = None
        self.reconnect_delay_ms: int | None = None  # the server's Reconnect, or 0

    # -- the connection ----------------------------------------------------------

    def login(self, token: str, now: float) -> None:
        """A link is open: queue the Login (the token only ever travels here)."""
        self._reset_connection()
        self.phase = Phase.LOGGING_IN
        self._login_id = self._new_id()
        self._last_frame = now
        self._queue(pb.Frame(id=self._login_id, login=pb.Login(
            protocol_version=1, token=token, inbox_seq=self.cursor.have, store_id=self.store_id,
            client_name=self.client_name)))

    def connection_lost(self, now: float) -> float:
        """The link is gone: forget the connection; seconds to wait before the next."""
        if self._up_since is not None and now - self._up_since > STAYED_UP_S:
            self.backoff.reset()
        if self.reconnect_delay_ms is not None:  # the server said when
            delay = self.reconnect_delay_ms / 1000 * (1 + self.rand())
        else:
            delay = self.backoff.next_delay(self.rand())
        self._reset_connection()
        self._out.clear()
        return delay

    def _logged_in(self, ack: pb.LoginAck, now: float) -> None:
        have, store = resume_cursor(self.cursor.have, self.store_id, ack.store_id, ack.inbox_head)
        reset = have != self.cursor.have
        if reset:
            # counted in another store (wiped, or restored from elsewhere), or
            # the server has less than the device: start over from what it has,
            # or new messages would be taken for duplicates
            log.warning("server store %s (inbox head %d) is not the one this device counted "
                        "in (%s, at %d): resyncing from 0", ack.store_id or "?", ack.inbox_head,
                        self.store_id or "?", self.cursor.have)
            self.cursor = InboxCursor(0)
            self.order = self._order_after_reset(ack.region)
            self.store_resets += 1
        self.store_id = store
        self.region = ack.region or self.region
        self.server_max_frame = ack.max_frame_bytes or self.server_max_frame
        self.sends.max_inflight = ack.max_inflight_sends or self.sends.max_inflight
        self.max_users_per_request = ack.max_users_per_request or self.max_users_per_request
        self._acked_sent = min(self.cursor.have, ack.inbox_head)
        self.user_id, self.device_id, self.inbox_head = ack.user_id, ack.device_id, ack.inbox_head
        if not self._heartbeat_fixed and ack.heartbeat_interval_ms:
            self.heartbeat_s = max(ack.heartbeat_interval_ms / 1000, 0.5)
        elif self.heartbeat_s is None:
            self.heartbeat_s = 15.0  # a server that names none
        self.phase = Phase.ACTIVE
        self._up_since = now
        self._beat_due = now + self.heartbeat_s
        self._events.append(LoggedIn(ack, reset))
        self.sends.reconnected()
        self._pump(now)
        self._events.append(SyncNeeded())

    # -- requests and sends -----------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def check_size(self, frame: pb.Frame) -> None:
        """FRAME_TOO_LARGE here, for a frame the server would refuse (and close
        the connection for): a retry cannot fix it, so it is never sent."""
        size = frame.ByteSize() + 11  # room for any request id
        if size > self.server_max_frame:
            raise RequestError(int(ErrorCode.FRAME_TOO_LARGE),
                               f"request of {size} bytes over the server's "
                               f"{self.server_max_frame}-byte frame limit; not sent")

    def request(self, frame: pb.Frame) -> int:
        """Queue a request with a new id; its answer comes as a Reply event."""
        frame.id = self._new_id()
        self._outstanding.add(frame.id)
        self._queue(frame)
        return frame.id

    def forget(self, request_id: int) -> None:
        """The caller stopped waiting: a late answer is dropped."""
        self._outstanding.discard(request_id)

    def send(self, conversation_id: str, text: str, now: float, *, payload: bytes = b"",
             content_type: str = "") -> int:
        """A message with a new cid, pending until acked and resent across
        reconnects; returns the cid (its SendDone event carries it)."""
        body = pb.Send(conversation_id=conversation_id, cid=self.cids.next(), text=text,
                       payload=payload, content_type=content_type)
        self.check_size(pb.Frame(id=2**63, send=body))  # queued, it would be refused forever
        self.sends.add(body.cid, body)
        self._pump(now)
        return body.cid

    def _pump(self, now: float) -> None:
        if self.phase is not Phase.ACTIVE:
            return
        for cid in self.sends.due(now):
            request_id = self._new_id()
            self._send_ids[request_id] = cid
            self._queue(pb.Frame(id=request_id, send=self.sends.pending[cid]))

    def _send_answered(self, cid: int, frame: pb.Frame, now: float) -> None:
        error = Reply(frame.id, frame).error
        if frame.WhichOneof("body") == "error" and frame.error.fatal:
            error = RequestError(frame.error.code, frame.error.message, False)
        outcome = self.sends.answered(cid, ok=error is None,
                                      retriable=error is not None and error.retriable, now=now,
                                      pause_s=0.05 + self.rand() * 0.2)
        if outcome is Outcome.ACKED:
            a = frame.send_ack
            self._events.append(SendDone(cid, Ack(a.conversation_id, a.seq, a.message_id, a.cid,
                                                  a.duplicate), None))
        elif outcome is Outcome.REFUSED:
            self._events.append(SendDone(cid, None, error))
        elif outcome is Outcome.RETRY:
            self.send_retries += 1
            self.last_send_error = error
            return
        self._pump(now)

    # -- input -------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """One frame's bytes from the link."""
        self._last_frame = now
        frame = pb.Frame()
        try:
            frame.ParseFromString(data)
        except DecodeError as exc:  # a broken server or link: a new connection may help
            self._end(f"undecodable frame from the server: {exc}")
            return
        kind = frame.WhichOneof("body")
        if self.phase is Phase.LOGGING_IN:
            if frame.id != self._login_id and kind != "error":
                return  # nothing else is due before the LoginAck
            if kind == "login_ack":
                self._logged_in(frame.login_ack, now)
            else:
                e = frame.error
                self._end(f"login refused: {e.message}", RequestError(e.code, e.message, e.retriable))
            return
        if self.phase is not Phase.ACTIVE:
            return
        if kind == "push":
            self.accept(frame.push.entries, now)
        elif kind == "group_push":
            push = frame.group_push
            self.accept_group(push.conversation_id, push.head_seq, wire.group_push_messages(push))
        elif kind == "sync_hint":
            self._events.append(SyncNeeded())
        elif kind == "reconnect":
            self.reconnect_delay_ms = frame.reconnect.delay_ms
            self._end(f"server asked to reconnect: {frame.reconnect.reason}")
        elif frame.id in self._send_ids:
            self._send_answered(self._send_ids.pop(frame.id), frame, now)
            if kind == "error" and frame.error.fatal:
                self._end(f"server closed: {frame.error.message}")
        elif frame.id in self._outstanding:
            self._outstanding.discard(frame.id)
            self._events.append(Reply(frame.id, frame))
            if kind == "error" and frame.error.fatal:
                self._end(f"server closed: {frame.error.message}")
        elif kind == "error":
            e = frame.error
            if e.fatal:
                self._end(e.message, RequestError(e.code, e.message, e.retriable))
            else:
                log.warning("server error: %s", RequestError(e.code, e.message, e.retriable))

    def accept(self, entries: Iterable[pb.InboxEntry], now: float) -> None:
        """Inbox entries (a push or a sync page): delivered once, in order."""
        cursor = self.cursor
        out: list[Message] = []
        for entry in entries:
            for message in cursor.accept(entry.inbox_seq,
                                         Message.from_pb(entry.message, entry.inbox_seq)):
                out += self.order.offer(message.conversation_id, message.seq, message,
                                        from_inbox=True)
        self._deliver(out)
        if self.phase is Phase.ACTIVE and cursor.have > self._acked_sent and self._ack_due is None:
            self._ack_due = now + self.ack_delay_s  # one cumulative ack covers what comes meanwhile
        if cursor.gap:
            self._events.append(SyncNeeded())

    def accept_group(self, conversation_id: str, head_seq: int, messages: Iterable[pb.Message],
                     joined_seq: int = 0) -> None:
        """Large-group messages (a push or a sync delta: not from the inbox)."""
        order = self.order
        out: list[Message] = []
        if joined_seq:
            out += order.start(conversation_id, joined_seq - 1)
        for m in messages:
            out += order.offer(conversation_id, m.seq, Message.from_pb(m), from_inbox=False)
        order.saw_head(conversation_id, head_seq)
        self._deliver(out)

    def accept_sync(self, response: pb.SyncResponse, now: float) -> None:
        self.inbox_head = max(self.inbox_head, response.inbox_head)
        self.accept(response.entries, now)
        for group in response.groups:
            self.accept_group(group.conversation_id, group.head_seq, group.messages,
                              group.joined_seq)

    def accept_pulled(self, conversation_id: str, messages: Iterable[pb.Message]) -> None:
        """A history page that fills a gap of `order.wants`."""
        self._deliver(self.order.pulled(conversation_id,
                                        [(m.seq, Message.from_pb(m)) for m in messages]))

    def _deliver(self, messages: list[Message]) -> None:
        if messages:
            self._events.append(Delivered(messages))
        if self.order.wants:
            self._events.append(PullNeeded())

    # -- the clock -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run what is due: the batched ack, paused sends, the heartbeat."""
        if self.phase is not Phase.ACTIVE:
            return
        if self._ack_due is not None and now >= self._ack_due:
            self._ack_due = None
            if self.cursor.have > self._acked_sent:
                self._acked_sent = self.cursor.have
                self._queue(pb.Frame(push_ack=pb.PushAck(inbox_seq=self.cursor.have)))
        if self.sends.paused_until is not None and now >= self.sends.paused_until:
            self._pump(now)
        if self._beat_due is not None and now >= self._beat_due:
            assert self.heartbeat_s is not None
            self._beat_due = now + self.heartbeat_s
            if now - self._last_frame > 3 * self.heartbeat_s:
                self._end("server silent for three heartbeats")
                return
            self._queue(pb.Frame(heartbeat=pb.Heartbeat(client_time_ms=int(time.time() * 1000))))

    def next_due(self) -> float | None:
        """`tick` has nothing to do before this time (None: nothing scheduled)."""
        if self.phase is not Phase.ACTIVE:
            return None
        due = [t for t in (self._ack_due, self.sends.paused_until, self._beat_due) if t is not None]
        return min(due) if due else None

    # -- output --------------------------------------------------------------------

    def _end(self, reason: str, error: RequestError | None = None) -> None:
        self.phase = Phase.OFFLINE
        self._events.append(Ended(reason, error))

    def _queue(self, frame: pb.Frame) -> None:
        self._out.append(frame.SerializeToString())

    def _order_after_reset(self, region: str) -> ConversationOrder[Message]:
        """What survives an inbox resync from 0. In another region (failover): what
        was delivered of 1:1 chats and groups, whose seqs one home sequences for every
        region, so the new store's copies of them are not handed out a second time;
        the rest (events: seqs per store) starts over. In the same region the store was
        wiped or replaced: its seqs may restart, so everything starts over."""
        order: ConversationOrder[Message] = ConversationOrder()
        if self.region and region and region != self.region:
            order.last.update({c: s for c, s in self.order.last.items()
                               if c.startswith(COMMON_SEQS)})
            order.large.update(c for c in self.order.large if c.startswith(COMMON_SEQS))
        return order

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def position(self) -> dict[str, Any]:
        """What this device has delivered (see Client.position)."""
        return {"store_id": self.store_id, "region": self.region, "inbox_seq": self.cursor.have,
                "conversations": dict(self.order.last), "large": sorted(self.order.large)}
