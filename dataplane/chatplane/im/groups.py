"""Groups: create, invite/add/join, leave, kick, roles, rename, dissolve.

Permissions are the ones chat apps have: owners and admins add, invite, kick
and rename (members may invite too when the setting says so); only the owner
changes roles, transfers ownership or dissolves; admins cannot kick admins;
nobody kicks the owner, and the owner cannot leave without handing over.

Consent (abuse.group_add_requires_consent, on by default): users a creator
or an admin adds who are not their friends get an invitation instead (an
"event/invitation" in their event conversation), which they accept with JOIN
or decline; the admin API adds without asking.

Each change is a system message in the group's own timeline (content_type
"system/group", payload a GroupEvent), written atomically with the change, so
every member's devices see membership in order with the messages, and a member
sees exactly the messages from its join up to its leave.

Several regions (regions/homes.py): a group is homed in the region that creates it;
a client's change made in another region is forwarded to the home, which checks it
against the member list it sequences; every other region replays it from the group's
replicated log (regions/groupchanges.py). The admin API's changes are forwarded the
same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

from chatplane.im.membership import Membership
from chatplane.im.sequencing import Sequencer
from chatplane.protocol.bounds import MAX_GROUP_NAME_CHARS as MAX_NAME
from chatplane.protocol.bounds import MAX_USERS_PER_OP, Bounds
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.rates import UserRates
from chatplane.regions.groupchanges import SYSTEM_GROUP
from chatplane.settings import Abuse
from chatplane.settings import Social as SocialSettings
from chatplane.storage.base import (
    ADMIN,
    GROUP,
    MEMBER,
    OWNER,
    AppendResult,
    ConversationNotFound,
    MembershipChange,
    SendRequest,
    Storage,
    StorageUnavailable,
    valid_id,
)
from chatplane.v1 import frames_pb2 as pb

# the device a keyed create's first entry (and its invitations) is stored under
CREATE_DEVICE = "group-create"


class Groups:
    def __init__(self, sequencer: Sequencer, membership: Membership, storage: Storage,
                 social: SocialSettings, abuse: Abuse, bounds: Bounds) -> None:
        self.sequencer = sequencer
        self.membership = membership
        self.storage = storage
        self.social = social
        self.bounds = bounds
        # abuse.group_add_requires_consent: non-friends added to a group are invited
        self.group_consent = bool(abuse.group_add_requires_consent)
        # group invitations per inviter, per process (docs/operations.md, "Abuse limits")
        self.invite_rates = UserRates(abuse.invite_rate_per_user_s, abuse.invite_burst_per_user)

    async def create(self, user: str, device: str, name: str, members: list[str],
                     by_admin: bool = False, cid: int = 0) -> tuple[AppendResult, list[str]]:
        """The new group, and who was invited rather than added (nobody when
        the admin API creates it). With the client's key (cid > 0) the create is
        idempotent: its id, its first entry's key and its invitations' keys come
        from (user, device, cid), so a repeat stores nothing new and answers the
        same group (docs/protocol.md, "Friends, groups, receipts")."""
        _check_name(name)
        others = _check_users(members, exclude=user)
        if len(others) + 1 > self.social.max_group_members:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "too many members")
        added, invited = (others, []) if by_admin else await self._consenting(user, others)
        self._charge_invitations(user, invited)
        change = MembershipChange(create=True, name=name,
                                  add=((user, OWNER), *((m, MEMBER) for m in added)))
        event = pb.GroupEvent(action=pb.GROUP_ACTION_UNSPECIFIED, actor=user, user_ids=added,
                              name=name)
        key = (user, device, cid) if cid > 0 else None
        conversation_id = await self.sequencer.new_group_id(key)
        homes = self.sequencer.homes
        if homes is not None:  # before its first entry, so the log carries it
            await homes.place_here(conversation_id)
        # keyed: the group's first entry is the only one under (user, CREATE_DEVICE, 1)
        once = (CREATE_DEVICE, 1) if key is not None else None
        result = await self._apply(conversation_id, user, device, change, event, once)
        await self._invite(result.message.conversation_id, invited, user, name,
                           keyed=key is not None)
        return result, invited

    async def _consenting(self, user: str, targets: list[str]) -> tuple[list[str], list[str]]:
        """(added, invited): with consent required, only the user's friends
        are added; the others get an invitation."""
        if not self.group_consent or not targets:
            return targets, []
        friends = {other for other, r in await self.storage.relations(user) if r.friend}
        return ([t for t in targets if t in friends], [t for t in targets if t not in friends])

    def _charge_invitations(self, inviter: str, targets: list[str]) -> None:
        """Take the invitations from the inviter's budget before anything is
        done, or refuse the whole request (RATE_LIMITED, retriable)."""
        if targets and not self.invite_rates.take(inviter, time.monotonic() * 1000.0,
                                                     len(targets)):
            raise ProtocolError(ErrorCode.RATE_LIMITED,
                                f"over {self.invite_rates.rate_per_s:g} group invitations/s"
                                " for this user; retry later")

    async def _invite(self, conversation_id: str, targets: list[str], inviter: str,
                      name: str, keyed: bool = False) -> None:
        """A pending invitation and an "event/invitation" for each target; a
        target who blocks the inviter is skipped without telling the inviter.
        keyed (a keyed create): each event under a key of the group's, so a
        repeated create invites nobody twice."""
        once = (f"{CREATE_DEVICE}:{conversation_id}", 1) if keyed else None
        if not targets:
            return
        blocking = {t for t in targets if (await self.storage.relation(t, inviter)).blocked}
        now = self.sequencer.clock_ms()

        async def one(target: str) -> None:
            await self.storage.put_invitation(conversation_id, target, inviter, now)
            await self.sequencer.emit(target, pb.Event(invitation=pb.InvitationEvent(
                conversation_id=conversation_id, inviter=inviter, name=name)), once)

        try:  # together: the SQLite writer commits them in a few groups
            await asyncio.gather(*(one(t) for t in targets if t not in blocking))
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc

    async def decline(self, user: str, conversation_id: str) -> None:
        if await self.storage.take_invitation(conversation_id, user) is None:
            raise ProtocolError(ErrorCode.NOT_FOUND,
                                f"{user} has no invitation to {conversation_id!r}")

    async def invitations(self, user: str) -> pb.InvitationsResponse:
        response = pb.InvitationsResponse()
        for conversation_id, inviter, at_ms in await self.storage.invitations(user):
            try:
                conversation = await self.membership.conversation(conversation_id)
            except ConversationNotFound:
                continue
            if conversation.extra.get("dissolved"):
                continue
            response.invitations.add(conversation_id=conversation_id, inviter=inviter,
                                     name=conversation.extra.get("name", ""), at_ms=at_ms)
        return response

    async def handle_op(self, user: str, device: str, op: pb.GroupOp) -> pb.GroupOpAck:
        """A client's GroupOp: applied here, or forwarded to the group's home region
        (which calls this again, as the home)."""
        homes = self.sequencer.homes
        if homes is not None and await self._known(op.conversation_id):
            forwarded = await homes.group_op_elsewhere(user, device, op)
            if forwarded is not None:
                return forwarded
        result: AppendResult | None
        invited: list[str] = []
        if op.action == pb.JOIN:
            result = await self.join(user, device, op.conversation_id)
        elif op.action == pb.DECLINE_INVITATION:
            await self.decline(user, op.conversation_id)
            result = None
        else:
            result, invited = await self.op(user, device, op)
        return pb.GroupOpAck(conversation_id=op.conversation_id,
                             seq=result.message.seq if result else 0, invited=invited)

    async def _known(self, conversation_id: str) -> bool:
        """Whether this region's store has the conversation (unknown ones are refused
        here as ever, never given a home)."""
        try:
            await self.membership.conversation(conversation_id)
        except ProtocolError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return False
            raise
        return True

    async def op(self, user: str, device: str,
                 op: pb.GroupOp) -> tuple[AppendResult | None, list[str]]:
        """The change (None: nothing to record), and who was invited."""
        conversation_id = op.conversation_id
        conversation = await self.membership.require_member(user, conversation_id)
        if (await self.sequencer.hold(conversation_id))[1]:  # just taken: roles may have changed
            conversation = await self.membership.require_member(user, conversation_id)
        if conversation.kind != GROUP:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"{conversation_id!r} is not a group")
        if conversation.extra.get("dissolved"):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"group {conversation_id!r} is dissolved")
        roles = {m.user_id: m.role for m in await self.membership.member_list(conversation_id)}
        mine = roles.get(user, "")
        manager = mine in (OWNER, ADMIN)
        action = op.action
        targets = _check_users(list(op.user_ids), exclude="")
        event = pb.GroupEvent(action=action, actor=user, user_ids=targets)
        invited: list[str] = []
        if action == pb.INVITE:
            if not (manager or self.social.members_can_invite):
                raise _forbidden(user, "invite")
            invited = [t for t in targets if t not in roles]
            self._charge_invitations(user, invited)
            await self._invite(conversation_id, invited, user, conversation.extra.get("name", ""))
            return None, invited
        if action == pb.ADD:
            if not manager:
                raise _forbidden(user, "add members")
            new = [t for t in targets if t not in roles]
            if len(roles) + len(new) > self.social.max_group_members:
                raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "too many members")
            new, invited = await self._consenting(user, new)
            self._charge_invitations(user, invited)
            await self._invite(conversation_id, invited, user, conversation.extra.get("name", ""))
            if not new:
                return None, invited
            del event.user_ids[:]
            event.user_ids.extend(new)
            change = MembershipChange(add=tuple((t, MEMBER) for t in new))
        elif action == pb.LEAVE:
            if mine == OWNER and len(roles) > 1:
                raise ProtocolError(ErrorCode.FORBIDDEN,
                                    "the owner must transfer ownership (SET_ROLE owner) or dissolve")
            del event.user_ids[:]
            event.user_ids.append(user)
            change = MembershipChange(remove=(user,))
        elif action == pb.KICK:
            if not manager:
                raise _forbidden(user, "kick")
            for target in targets:
                if target not in roles:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"{target} is not a member")
                if roles[target] == OWNER or (roles[target] == ADMIN and mine != OWNER):
                    raise _forbidden(user, f"kick {target} ({roles[target]})")
            change = MembershipChange(remove=tuple(targets))
        elif action == pb.SET_ROLE:
            if mine != OWNER:
                raise _forbidden(user, "change roles")
            if len(targets) != 1 or targets[0] not in roles or targets[0] == user:
                raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "name one other member")
            if op.role not in (OWNER, ADMIN, MEMBER):
                raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "role: owner, admin or member")
            event.role = op.role
            new_roles = [(targets[0], op.role)]
            if op.role == OWNER:  # transfer: the old owner stays as admin
                new_roles.append((user, ADMIN))
            change = MembershipChange(roles=tuple(new_roles))
        elif action == pb.RENAME:
            if not manager:
                raise _forbidden(user, "rename")
            _check_name(op.name)
            event.name = op.name
            change = MembershipChange(name=op.name)
        elif action == pb.DISSOLVE:
            if mine != OWNER:
                raise _forbidden(user, "dissolve")
            change = MembershipChange(dissolve=True)
        else:
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, "unknown group action")
        return await self._apply(conversation_id, user, device, change, event), invited

    async def join(self, user: str, device: str, conversation_id: str) -> AppendResult:
        """Accept an invitation (the only way in that a member does not grant)."""
        inviter = await self.storage.take_invitation(conversation_id, user)
        if inviter is None:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{user} has no invitation to {conversation_id!r}")
        event = pb.GroupEvent(action=pb.JOIN, actor=user, user_ids=[user])
        return await self._apply(conversation_id, user, device,
                                 MembershipChange(add=((user, MEMBER),)), event)

    async def _apply(self, conversation_id: str, user: str, device: str,
                     change: MembershipChange, event: pb.GroupEvent,
                     once: tuple[str, int] | None = None) -> AppendResult:
        sequencer, membership = self.sequencer, self.membership
        event_device, event_cid = (once if once is not None
                                   else (sequencer.event_device, sequencer.next_event_cid()))
        request = SendRequest(
            conversation_id=conversation_id, sender=user, sender_device=event_device,
            cid=event_cid, text="", message_id=uuid.uuid4().hex,
            sent_at_ms=sequencer.clock_ms(), payload=event.SerializeToString(),
            content_type=SYSTEM_GROUP)
        affected = {u for u, _ in change.add} | set(change.remove)
        await sequencer.hold(conversation_id)  # taking it drops what is cached of the group
        before: tuple[str, ...] = ()
        if not change.create:
            before = (await membership.conversation(conversation_id, fresh=True)).members
        after = (set(before) | {u for u, _ in change.add}) - set(change.remove)
        # A large group (counted after the change) is read-diffused: only the
        # users whose membership changed get the event in their inbox (so they
        # learn where they start or stop); the others pull it like messages.
        large = sequencer.is_large(tuple(after))
        recipients = sorted(affected) if large else None
        # every instance's cached members (or name, dissolved) of the group
        # go before the write and again after it (im/invalidation.py)
        only_settings = not (change.add or change.remove or change.roles)
        try:
            async with membership.changing("settings" if only_settings else "members",
                                           conversation_id):
                result = await sequencer.appended(
                    conversation_id, recipients or sorted(set(before) | after),
                    lambda fence, inboxes: self.storage.apply_membership(
                        conversation_id, change, dataclasses.replace(request, fence=fence),
                        recipients, inboxes), take_back=True, group_change=True)
        except ConversationNotFound as exc:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {conversation_id!r}") from exc
        except StorageUnavailable as exc:
            raise ProtocolError(ErrorCode.UNAVAILABLE, str(exc)) from exc
        membership.forget_members(conversation_id)
        membership.forget_spans(conversation_id, affected)
        homes = sequencer.homes
        online = tuple(sorted(after - affected)) if large else ()
        if homes is None or result.duplicate:
            sequencer.deliver(result, online)
        else:  # pushed once it may be acked, like a send (im/sequencing.py)
            homes.deliver_when_confirmed(conversation_id, result.log_position,
                                         lambda: sequencer.deliver(result, online))
        if homes is not None:  # sequenced here as the group's home: acked like a send
            if not result.duplicate:
                homes.committed()
            await homes.settle(conversation_id, result.log_position)
        return result

    async def admin_change(self, conversation_id: str, add: list[str], remove: list[str],
                           dissolve: bool = False) -> int:
        """The admin API's changes: no role checks; recorded as done by the owner, here
        or by the group's home region. The seq of the last change recorded (0: none)."""
        conversation = await self.membership.conversation(conversation_id, fresh=True)
        if conversation.kind != GROUP:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no group {conversation_id!r}")
        homes = self.sequencer.homes
        if homes is not None:
            seq = await homes.admin_change_elsewhere(conversation_id, add, remove, dissolve)
            if seq is not None:
                return seq
        result = await self._admin_change(conversation_id, add, remove, dissolve)
        return result.message.seq if result is not None else 0

    async def _admin_change(self, conversation_id: str, add: list[str], remove: list[str],
                            dissolve: bool) -> AppendResult | None:
        roles = {m.user_id: m.role for m in await self.storage.members(conversation_id)}
        owner = next((u for u, r in roles.items() if r == OWNER), "")
        new = [u for u in _check_users(add, exclude="") if u not in roles]
        gone = [u for u in _check_users(remove, exclude="") if u in roles and u != owner]
        if dissolve:
            return await self._apply(conversation_id, owner, "admin-api",
                                     MembershipChange(dissolve=True),
                                     pb.GroupEvent(action=pb.DISSOLVE, actor=owner))
        result = None
        if new:
            result = await self._apply(
                conversation_id, owner, "admin-api",
                MembershipChange(add=tuple((u, MEMBER) for u in new)),
                pb.GroupEvent(action=pb.ADD, actor=owner, user_ids=new))
        if gone:
            result = await self._apply(
                conversation_id, owner, "admin-api", MembershipChange(remove=tuple(gone)),
                pb.GroupEvent(action=pb.KICK, actor=owner, user_ids=gone))
        return result

    async def members(self, user: str, conversation_id: str, after: str,
                      limit: int) -> pb.MembersResponse:
        await self.membership.require_member(user, conversation_id)
        limit = max(1, min(limit or 500, self.bounds.max_members_page))
        members = await self.membership.member_list(conversation_id)
        page = [m for m in members if m.user_id > after]
        return pb.MembersResponse(
            members=[pb.Member(user_id=m.user_id, role=m.role, joined_seq=m.joined_seq)
                     for m in page[:limit]],
            has_more=len(page) > limit, total=len(members))


def _forbidden(user: str, what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.FORBIDDEN, f"{user} may not {what} in this group")


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"name over {MAX_NAME} characters")


def _check_users(users: list[str], exclude: str) -> list[str]:
    if len(users) > MAX_USERS_PER_OP:
        raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"at most {MAX_USERS_PER_OP} users at once")
    for u in users:
        if not valid_id(u):
            raise ProtocolError(ErrorCode.INVALID_ARGUMENT, f"invalid user id {u!r}")
    return [u for u in dict.fromkeys(users) if u != exclude]
