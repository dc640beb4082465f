"""A group's membership as its replicated log carries it (docs/architecture.md, "Regions"):
every change is a system message ("system/group", payload a GroupEvent) sequenced by
the group's home with the change, so a region that applies the log replays each change
from its event, at the event's seq, and ends with the home's member list and roles.
Pure rules, no I/O."""

from __future__ import annotations

from chatplane.storage.base import ADMIN, MEMBER, OWNER, MembershipChange, StoredMessage
from chatplane.v1 import frames_pb2 as pb

SYSTEM_GROUP = "system/group"  # the content type of a group's change events


def change_of(message: StoredMessage) -> MembershipChange | None:
    """The change a group's system message records (None: an ordinary message). Mirrors
    what im/groups.py applies with each event: the creator owns the group, added and
    joining users are members, a transfer of ownership leaves the old owner admin."""
    if message.content_type != SYSTEM_GROUP:
        return None
    event = pb.GroupEvent.FromString(message.payload)
    users = tuple(event.user_ids)
    action = event.action
    if action == pb.GROUP_ACTION_UNSPECIFIED:  # the group's creation
        return MembershipChange(create=True, name=event.name,
                                add=((event.actor, OWNER), *((u, MEMBER) for u in users)))
    if action in (pb.ADD, pb.JOIN):
        return MembershipChange(add=tuple((u, MEMBER) for u in users))
    if action in (pb.LEAVE, pb.KICK):
        return MembershipChange(remove=users)
    if action == pb.SET_ROLE:
        roles = [(u, event.role) for u in users]
        if event.role == OWNER:
            roles.append((event.actor, ADMIN))
        return MembershipChange(roles=tuple(roles))
    if action == pb.RENAME:
        return MembershipChange(name=event.name)
    if action == pb.DISSOLVE:
        return MembershipChange(dissolve=True)
    return None  # INVITE and DECLINE record nothing in the timeline
