"""The replay rules of a group's change events (regions/groupchanges.py): each system
message im/groups.py records maps back to the change it was recorded with."""

from __future__ import annotations

import pytest

from chatplane.regions.groupchanges import SYSTEM_GROUP, change_of
from chatplane.storage.base import ADMIN, MEMBER, OWNER, MembershipChange, StoredMessage
from chatplane.v1 import frames_pb2 as pb


def _message(event: pb.GroupEvent, content_type: str = SYSTEM_GROUP) -> StoredMessage:
    return StoredMessage(conversation_id="g:x", seq=2, message_id="m", sender=event.actor,
                         sender_device="im-1", cid=1, text="", sent_at_ms=1,
                         payload=event.SerializeToString(), content_type=content_type)


@pytest.mark.parametrize(("event", "change"), [
    (pb.GroupEvent(actor="ann", user_ids=["bob", "cat"], name="n"),
     MembershipChange(create=True, name="n", add=(("ann", OWNER), ("bob", MEMBER),
                                                  ("cat", MEMBER)))),
    (pb.GroupEvent(action=pb.ADD, actor="ann", user_ids=["dan"]),
     MembershipChange(add=(("dan", MEMBER),))),
    (pb.GroupEvent(action=pb.JOIN, actor="eve", user_ids=["eve"]),
     MembershipChange(add=(("eve", MEMBER),))),
    (pb.GroupEvent(action=pb.LEAVE, actor="bob", user_ids=["bob"]),
     MembershipChange(remove=("bob",))),
    (pb.GroupEvent(action=pb.KICK, actor="ann", user_ids=["cat", "dan"]),
     MembershipChange(remove=("cat", "dan"))),
    (pb.GroupEvent(action=pb.SET_ROLE, actor="ann", user_ids=["bob"], role=ADMIN),
     MembershipChange(roles=(("bob", ADMIN),))),
    (pb.GroupEvent(action=pb.SET_ROLE, actor="ann", user_ids=["bob"], role=OWNER),
     MembershipChange(roles=(("bob", OWNER), ("ann", ADMIN)))),
    (pb.GroupEvent(action=pb.RENAME, actor="ann", name="new"), MembershipChange(name="new")),
    (pb.GroupEvent(action=pb.DISSOLVE, actor="ann"), MembershipChange(dissolve=True)),
])
def test_each_event_replays_its_change(event: pb.GroupEvent, change: MembershipChange) -> None:
    assert change_of(_message(event)) == change


def test_ordinary_messages_change_nothing() -> None:
    assert change_of(_message(pb.GroupEvent(actor="ann"), content_type="text")) is None
    assert change_of(_message(pb.GroupEvent(action=pb.INVITE, actor="ann",
                                            user_ids=["x"]))) is None
