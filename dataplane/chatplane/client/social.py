"""The SDK's social API: friends, groups, the conversation list, read state
and receipts, plus `events()`, the one stream that carries every kind of
change (docs/client.md). Mixed into `Client`; every call is one request frame.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.json_format import MessageToDict

from chatplane.v1 import frames_pb2 as pb

if TYPE_CHECKING:
    from chatplane.client.client import Message

EVENT_KINDS = {"event/friend": "friend", "event/read": "read", "event/receipt": "receipt",
               "event/invitation": "invitation"}


@dataclass(frozen=True, slots=True)
class Event:
    """One change, in the order the user's inbox holds it.

    kind: "message" (a chat message), "group" (a group change: `detail` has
    action, actor, user_ids, role, name), "friend" (action, actor, user_id,
    note), "read" (conversation_id, read_seq: read on one of the user's
    devices), "receipt" (conversation_id, reader, read_seq: someone read your
    messages), "invitation" (conversation_id, inviter, name)."""

    kind: str
    message: Message
    detail: dict[str, Any]


def to_event(message: Message) -> Event:
    if message.content_type == "system/group":
        detail = MessageToDict(pb.GroupEvent.FromString(message.payload),
                               preserving_proto_field_name=True)
        detail.setdefault("action", "CREATED")
        if detail["action"] == "GROUP_ACTION_UNSPECIFIED":
            detail["action"] = "CREATED"
        return Event("group", message, detail)
    kind = EVENT_KINDS.get(message.content_type)
    if kind is not None:
        event = pb.Event.FromString(message.payload)
        inner = getattr(event, kind)
        return Event(kind, message, MessageToDict(inner, preserving_proto_field_name=True))
    return Event("message", message, {})


@dataclass(frozen=True, slots=True)
class Relation:
    user_id: str
    friend: bool
    request_sent: bool
    request_received: bool
    note: str
    blocked: bool

    @classmethod
    def from_pb(cls, r: pb.Relation) -> Relation:
        return cls(r.user_id, r.friend, r.request_sent, r.request_received, r.note, r.blocked)


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    conversation_id: str
    kind: str
    name: str
    unread: int
    read_seq: int
    head_seq: int
    last_activity_ms: int
    members: int
    last_message: Message | None


@dataclass(frozen=True, slots=True)
class MemberInfo:
    user_id: str
    role: str
    joined_seq: int


@dataclass(frozen=True, slots=True)
class Invitation:
    conversation_id: str
    inviter: str
    name: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Receipts:
    read: list[str]
    unread: list[str]


# Bytes of a group request besides its user ids (name, conversation id, tags).
GROUP_REQUEST_OVERHEAD = 512


class SocialApi:
    """Requires `_request(frame) -> frame` and `_next_item()` from Client."""

    max_users_per_request: int  # from LoginAck (Client sets it)
    _server_max_frame: int
    # who of the last create_group / add_members got an invitation instead of
    # being added (they are not your friends: docs/client.md, "Groups")
    last_invited: list[str] = []

    def _user_chunks(self, user_ids: list[str]) -> list[list[str]]:
        """`user_ids` in requests the server takes: at most
        max_users_per_request each, and under the frame limit."""
        budget = self._server_max_frame - GROUP_REQUEST_OVERHEAD
        chunks: list[list[str]] = []
        current: list[str] = []
        size = 0
        for user in user_ids:
            cost = len(user.encode()) + 3  # tag, length, id
            if current and (len(current) >= self.max_users_per_request or size + cost > budget):
                chunks.append(current)
                current, size = [], 0
            current.append(user)
            size += cost
        return [*chunks, current] if current else chunks

    async def _request(self, frame: pb.Frame, attempts: int = 8) -> pb.Frame:
        raise NotImplementedError

    async def _next_item(self) -> Message | None:
        raise NotImplementedError

    # -- friends -------------------------------------------------------------

    async def _friend(self, action: int, user_id: str, note: str = "") -> Relation:
        reply = await self._request(pb.Frame(friend_op=pb.FriendOp(
            action=action, user_id=user_id, note=note)))  # type: ignore[arg-type]
        return Relation.from_pb(reply.friend_op_ack.relation)

    async def add_friend(self, user_id: str, note: str = "") -> Relation:
        """Ask for friendship (accepts at once if they asked you first)."""
        return await self._friend(pb.REQUEST, user_id, note)

    async def accept_friend(self, user_id: str) -> Relation:
        return await self._friend(pb.ACCEPT, user_id)

    async def decline_friend(self, user_id: str) -> Relation:
        return await self._friend(pb.DECLINE, user_id)

    async def remove_friend(self, user_id: str) -> Relation:
        return await self._friend(pb.REMOVE, user_id)

    async def block(self, user_id: str) -> Relation:
        return await self._friend(pb.BLOCK, user_id)

    async def unblock(self, user_id: str) -> Relation:
        return await self._friend(pb.UNBLOCK, user_id)

    async def _relations(self) -> pb.FriendsResponse:
        return (await self._request(pb.Frame(friends=pb.FriendsRequest()))).friends_response

    async def friends(self) -> list[Relation]:
        return [Relation.from_pb(r) for r in (await self._relations()).friends]

    async def friend_requests(self) -> dict[str, list[Relation]]:
        """{"incoming": [...], "outgoing": [...]} pending requests."""
        response = await self._relations()
        return {"incoming": [Relation.from_pb(r) for r in response.incoming],
                "outgoing": [Relation.from_pb(r) for r in response.outgoing]}

    async def blocked(self) -> list[str]:
        return [r.user_id for r in (await self._relations()).blocked]

    # -- groups --------------------------------------------------------------

    async def create_group(self, name: str, members: list[str]) -> str:
        """A new group with you as owner; returns its conversation id. Your
        friends are added; others are invited (`last_invited`) unless the
        server allows adding anyone. A long member list goes in several
        requests (the first creates, the others add)."""
        chunks = self._user_chunks(members) or [[]]
        # the create's key: every resend of this request makes (or finds) one group
        cid = secrets.randbits(63) or 1
        reply = await self._request(pb.Frame(group_create=pb.GroupCreate(
            name=name, members=chunks[0], cid=cid)))
        conversation_id = reply.group_op_ack.conversation_id
        invited = list(reply.group_op_ack.invited)
        for chunk in chunks[1:]:
            invited += await self._add(conversation_id, chunk)
        self.last_invited = invited
        return conversation_id

    async def _add(self, conversation_id: str, user_ids: list[str]) -> list[str]:
        reply = await self._request(pb.Frame(group_op=pb.GroupOp(
            conversation_id=conversation_id, action=pb.ADD, user_ids=user_ids)))
        return list(reply.group_op_ack.invited)

    async def _group(self, conversation_id: str, action: int, user_ids: list[str] | None = None,
                     role: str = "", name: str = "") -> int:
        reply = await self._request(pb.Frame(group_op=pb.GroupOp(
            conversation_id=conversation_id, action=action,  # type: ignore[arg-type]
            user_ids=user_ids or [], role=role, name=name)))
        return reply.group_op_ack.seq

    async def invite(self, conversation_id: str, user_ids: list[str]) -> None:
        """Invite users; each accepts with join()."""
        await self._group(conversation_id, pb.INVITE, user_ids)

    async def add_members(self, conversation_id: str, user_ids: list[str]) -> int:
        """Owner/admin: add your friends at once, invite the others
        (`last_invited`); split into requests the server takes. Returns the
        seq of the last change recorded (0: none)."""
        seq = 0
        invited: list[str] = []
        for chunk in self._user_chunks(user_ids):
            reply = await self._request(pb.Frame(group_op=pb.GroupOp(
                conversation_id=conversation_id, action=pb.ADD, user_ids=chunk)))
            seq = reply.group_op_ack.seq or seq
            invited += reply.group_op_ack.invited
        self.last_invited = invited
        return seq

    async def join(self, conversation_id: str) -> int:
        """Accept an invitation: you become a member."""
        return await self._group(conversation_id, pb.JOIN)

    async def decline(self, conversation_id: str) -> None:
        """Decline an invitation (NOT_FOUND when there is none)."""
        await self._group(conversation_id, pb.DECLINE_INVITATION)

    async def invitations(self) -> list[Invitation]:
        """Your pending group invitations, newest first."""
        reply = await self._request(pb.Frame(invitations=pb.InvitationsRequest()))
        return [Invitation(i.conversation_id, i.inviter, i.name, i.at_ms)
                for i in reply.invitations_response.invitations]

    async def leave(self, conversation_id: str) -> int:
        return await self._group(conversation_id, pb.LEAVE)

    async def kick(self, conversation_id: str, user_id: str) -> int:
        return await self._group(conversation_id, pb.KICK, [user_id])

    async def set_role(self, conversation_id: str, user_id: str, role: str) -> int:
        """role: "admin", "member", or "owner" (transfers ownership)."""
        return await self._group(conversation_id, pb.SET_ROLE, [user_id], role=role)

    async def rename_group(self, conversation_id: str, name: str) -> int:
        return await self._group(conversation_id, pb.RENAME, name=name)

    async def dissolve_group(self, conversation_id: str) -> int:
        return await self._group(conversation_id, pb.DISSOLVE)

    async def members(self, conversation_id: str, after_user_id: str = "",
                      limit: int = 500) -> list[MemberInfo]:
        reply = await self._request(pb.Frame(members=pb.MembersRequest(
            conversation_id=conversation_id, after_user_id=after_user_id, limit=limit)))
        return [MemberInfo(m.user_id, m.role, m.joined_seq)
                for m in reply.members_response.members]

    # -- conversations, reads, receipts ----------------------------------------

    async def conversations(self, limit: int = 50,
                            before: ConversationInfo | None = None) -> list[ConversationInfo]:
        """Your conversations, most recent activity first; page with `before`."""
        from chatplane.client.client import Message

        request = pb.ConversationsRequest(limit=limit)
        if before is not None:
            request.before_activity_ms = before.last_activity_ms
            request.before_id = before.conversation_id
        reply = await self._request(pb.Frame(conversations=request))
        return [ConversationInfo(
            c.conversation_id, c.kind, c.name, c.unread, c.read_seq, c.head_seq,
            c.last_activity_ms, c.members,
            Message.from_pb(c.last_message) if c.HasField("last_message") else None)
            for c in reply.conversations_response.conversations]

    async def mark_read(self, conversation_id: str, seq: int) -> int:
        """Read up to seq (on every device of yours); returns the read position."""
        reply = await self._request(pb.Frame(mark_read=pb.MarkRead(
            conversation_id=conversation_id, seq=seq)))
        return reply.mark_read_ack.read_seq

    async def receipts(self, conversation_id: str, seq: int, page: int = 10_000) -> Receipts:
        """Who of the members has read message `seq`, and who has not (the
        sender and members who joined later are in neither list). Fetches
        every page of `page` members."""
        read: list[str] = []
        unread: list[str] = []
        after = ""
        while True:
            reply = await self._request(pb.Frame(receipts=pb.ReceiptsRequest(
                conversation_id=conversation_id, seq=seq, after_user_id=after, limit=page)))
            response = reply.receipts_response
            read += response.read
            unread += response.unread
            if not response.has_more or not (response.read or response.unread):
                return Receipts(read, unread)
            after = max(response.read[-1:] + response.unread[-1:])

    async def events(self) -> AsyncIterator[Event]:
        """Every change for this user, once, in inbox order: messages, group
        changes, friend changes, reads on other devices, receipts, invitations.
        Use either events() or messages(), not both."""
        while True:
            message = await self._next_item()
            if message is None:
                return
            yield to_event(message)
