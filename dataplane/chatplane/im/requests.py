"""Client requests to the im tier, frame in, frame out.

The gateway forwards every request it does not handle itself (login, acks and
heartbeats stay at the gateway) as a `Frame`, and sends back the `Frame` this
returns: a reply with the request's id, or an `Error` frame. Because the
boundary is a frame, a new request kind needs a handler here and nothing in
the gateway, and a remote im (gRPC) forwards bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from chatplane.im import social
from chatplane.im.leases import NotOwner
from chatplane.im.sequencing import SETTLE_LATER
from chatplane.protocol import bounds, wire
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.wire import error_frame
from chatplane.storage.base import StorageUnavailable
from chatplane.storage.pipelining import PIPELINED, PipelinedSend
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb

if TYPE_CHECKING:
    from chatplane.im.service import ImService

Handler = Callable[["ImService", str, str, pb.Frame], Awaitable[pb.Frame]]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


def admit(request: spb.ClientRequest, limits: bounds.Bounds) -> pb.Frame:
    """The frame of an `Im.Handle` call, decoded and held to the same bounds
    as a client's frame at the gateway (a caller other than our gateway must
    not get past them); an Error frame when it is refused."""
    frame = pb.Frame()
    try:
        frame.ParseFromString(request.frame)
    except (DecodeError, RuntimeError, ValueError) as exc:
        return error_frame(0, ErrorCode.BAD_FRAME, f"undecodable frame: {exc}")
    out_of_bounds = bounds.call_problem("handle", request)
    kind = frame.WhichOneof("body") or ""
    if out_of_bounds is None and kind not in HANDLERS:
        return error_frame(frame.id, ErrorCode.UNKNOWN_FRAME, f"{kind} is not served by im")
    if out_of_bounds is None:
        out_of_bounds = bounds.problem(kind, getattr(frame, kind), limits)
    if out_of_bounds is not None:
        return error_frame(frame.id, ErrorCode.INVALID_ARGUMENT, out_of_bounds)
    return frame


async def handle(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    kind = frame.WhichOneof("body")
    handler = HANDLERS.get(kind or "")
    if handler is None:
        return error_frame(frame.id, ErrorCode.UNKNOWN_FRAME, f"{kind} is not served by im")
    return await _answered(handler, im, user_id, device_id, frame)


async def _answered(handler: Handler, im: ImService, user_id: str, device_id: str,
                    frame: pb.Frame) -> pb.Frame:
    """The reply of `handler` to `frame`, with the request's id (an Error frame
    when it refuses)."""
    try:
        reply = await handler(im, user_id, device_id, frame)
    except NotOwner:
        raise  # the im tier's server sends it back to the gateway, to try the new owner
    except ProtocolError as exc:
        return error_frame(frame.id, exc.code, exc.message)
    reply.id = frame.id
    return reply


async def handle_sends(im: ImService, user_id: str, device_id: str,
                       frames: Sequence[pb.Frame]) -> list[pb.Frame]:
    """One device's sends, in its cid order, each sequenced after the one
    before it: so they take seqs in that order however the storage schedules
    concurrent appends. A send starts once the one before it was stored, or
    only queued where the storage stores in queue order (SQLite's writer:
    storage/pipelining.py), so a lane's sends share one commit instead of
    paying one each. After a retriable failure (cid c) the later sends are
    refused with the same code (those not started are never stored; a later
    one the storage refuses as c failed), so that the device's resend from c
    cannot land behind them. A frame that failed admission (an Error frame)
    is its own reply; only sends are served."""
    if im.sequencer.homes is None:  # one region: nothing to settle (sequencing.py)
        return await _sends_in_order(im, user_id, device_id, frames)
    appended: list[tuple[str, int]] = []
    deferring = SETTLE_LATER.set(appended)
    try:
        replies = await _sends_in_order(im, user_id, device_id, frames)
    finally:
        SETTLE_LATER.reset(deferring)
    if appended:  # sync durability: one wait for the batch
        try:
            await im.sequencer.settle(appended)
        except ProtocolError as exc:  # stored, not confirmed: the device resends them all
            replies = [error_frame(reply.id, exc.code, exc.message)
                       if reply.WhichOneof("body") == "send_ack" else reply for reply in replies]
    return replies


async def _sends_in_order(im: ImService, user_id: str, device_id: str,
                          frames: Sequence[pb.Frame]) -> list[pb.Frame]:
    loop: asyncio.AbstractEventLoop | None = None  # asked only to pipeline (a getpid each)
    started: list[pb.Frame | asyncio.Task[pb.Frame]] = []
    after: object = None  # the previous send's storage ticket
    for frame in frames:
        kind = frame.WhichOneof("body")
        if kind == "error":
            started.append(frame)
            if _retriable(frame):
                break
            continue
        if kind != "send":
            started.append(error_frame(frame.id, ErrorCode.INVALID_ARGUMENT, f"{kind} is not a send"))
            continue
        if len(frames) == 1:  # nothing to pipeline (and its kind is known: no second dispatch)
            started.append(await _answered(send, im, user_id, device_id, frame))
            break
        body = frame.send
        if loop is None:
            loop = asyncio.get_running_loop()
        pipelined = PipelinedSend(body.conversation_id, user_id, device_id, body.cid,
                                  loop.create_future(), after)
        token = PIPELINED.set(pipelined)
        try:  # the task runs in a copy of this context: its append sees `pipelined`
            task = loop.create_task(_answered(send, im, user_id, device_id, frame))
        finally:
            PIPELINED.reset(token)
        task.add_done_callback(pipelined.finished)
        started.append(task)
        await pipelined.queued  # queued in order, or finished
        if pipelined.ticket is not None:
            after = pipelined.ticket
        if task.done() and (task.cancelled() or task.exception() is not None
                            or _retriable(task.result())):
            break  # the rest are refused below (or the failure raised), unsent
    replies: list[pb.Frame] = []
    failure: BaseException | None = None
    for item in started:  # every task awaited, even after a failure: none is left behind
        if isinstance(item, pb.Frame):
            replies.append(item)
            continue
        try:
            replies.append(await item)
        except BaseException as exc:  # NotOwner, a bug: raised once every task ended
            failure = failure or exc
    if failure is not None:
        raise failure
    for i, (frame, reply) in enumerate(zip(frames, replies, strict=False)):
        if reply.HasField("error") and reply.error.retriable:
            code = ErrorCode(reply.error.code)
            return replies[:i + 1] + [
                error_frame(later.id, code, f"after failed send cid {frame.send.cid}; resend from it")
                for later in frames[i + 1:]]
    return replies


def _retriable(reply: pb.Frame) -> bool:
    return reply.WhichOneof("body") == "error" and reply.error.retriable


@handles("send")
async def send(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.send
    result = await im.sequencer.send(user_id, device_id, body.conversation_id, body.cid, body.text,
                           body.payload, body.content_type)
    m = result.message
    return pb.Frame(send_ack=pb.SendAck(
        conversation_id=m.conversation_id, seq=m.seq, message_id=m.message_id, cid=m.cid,
        sent_at_ms=m.sent_at_ms, duplicate=result.duplicate))


@handles("sync")
async def sync(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.sync
    limit = max(1, min(body.limit or im.limits.max_sync_page, im.limits.max_sync_page))
    items, head = await im.reads.sync(user_id, body.after_inbox_seq, limit)
    response = pb.SyncResponse(entries=[wire.inbox_entry(item) for item in items[:limit]],
                               inbox_head=head, has_more=len(items) > limit)
    if not response.has_more:  # the last inbox page also brings the large groups' deltas
        cursors = {c.conversation_id: c.seq for c in body.conversations}
        for conversation_id, group_head, joined, page, more in await im.reads.group_deltas(
                user_id, cursors):
            response.groups.add(conversation_id=conversation_id, head_seq=group_head,
                                joined_seq=joined, messages=[wire.message(m) for m in page],
                                has_more=more)
    return pb.Frame(sync_response=response)


@handles("history")
async def history(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.history
    messages, head, has_more = await im.reads.history(user_id, body.conversation_id, body.before_seq,
                                                body.after_seq, body.limit)
    return pb.Frame(history_response=pb.HistoryResponse(
        conversation_id=body.conversation_id, messages=[wire.message(m) for m in messages],
        head_seq=head, has_more=has_more))


@handles("open_direct")
async def open_direct(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    conversation = await im.membership.open_direct(user_id, frame.open_direct.peer_user_id)
    return pb.Frame(open_direct_ack=pb.OpenDirectAck(
        conversation_id=conversation.conversation_id, head_seq=conversation.head_seq))


@handles("friend_op")
async def friend_op(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    relation = await im.social.friend_op(user_id, frame.friend_op, device_id)
    return pb.Frame(friend_op_ack=pb.FriendOpAck(
        relation=social.relation_pb(frame.friend_op.user_id, relation)))


@handles("friends")
async def friends(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    return pb.Frame(friends_response=await im.social.friends(user_id))


@handles("group_create")
async def group_create(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.group_create
    result, invited = await im.groups.create(user_id, device_id, body.name, list(body.members),
                                             cid=body.cid)
    return pb.Frame(group_op_ack=pb.GroupOpAck(
        conversation_id=result.message.conversation_id, seq=result.message.seq, invited=invited))


@handles("group_op")
async def group_op(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    return pb.Frame(group_op_ack=await im.groups.handle_op(user_id, device_id, frame.group_op))


@handles("invitations")
async def invitations(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    return pb.Frame(invitations_response=await im.groups.invitations(user_id))


@handles("members")
async def members(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.members
    return pb.Frame(members_response=await im.groups.members(
        user_id, body.conversation_id, body.after_user_id, body.limit))


@handles("conversations")
async def conversations(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.conversations
    limit = max(1, min(body.limit or 50, im.bounds.max_conversations_page))
    before = (body.before_activity_ms, body.before_id) if body.before_id else None
    try:
        rows = await im.storage.conversations_of(user_id, limit + 1, before)
    except StorageUnavailable as exc:
        raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
    rows = await im.reads.conversations(rows)  # nothing unconfirmed (sync durability)
    response = pb.ConversationsResponse(has_more=len(rows) > limit)
    for row in rows[:limit]:
        item = response.conversations.add(
            conversation_id=row.conversation_id, kind=row.kind, name=row.name,
            unread=row.unread, read_seq=row.read_seq, head_seq=row.head_seq,
            last_activity_ms=row.last_activity_ms, members=row.members)
        if row.last_message is not None:
            item.last_message.CopyFrom(wire.message(row.last_message))
    return pb.Frame(conversations_response=response)


@handles("mark_read")
async def mark_read(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.mark_read
    read_seq = await im.social.mark_read(user_id, body.conversation_id, body.seq)
    return pb.Frame(mark_read_ack=pb.MarkReadAck(conversation_id=body.conversation_id,
                                                 read_seq=read_seq))


@handles("receipts")
async def receipts(im: ImService, user_id: str, device_id: str, frame: pb.Frame) -> pb.Frame:
    body = frame.receipts
    await im.membership.conversation(body.conversation_id, fresh=True)  # current head for the seq check
    return pb.Frame(receipts_response=await im.social.receipts(
        user_id, body.conversation_id, body.seq, body.after_user_id, body.limit))
