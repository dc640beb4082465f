"""The Storage conformance suite, social half: groups, reads, lists, relations.

Same `backend` fixture as test_conformance.py (SQLite and ScyllaDB). Group
changes are sequenced system events (`apply_membership`); read positions only
move forward; the conversation list is ordered by activity and counts unread.
"""

from __future__ import annotations

import pytest

from chatplane.storage.base import (
    ADMIN,
    DIRECT,
    EVENTS,
    GROUP,
    MEMBER,
    OWNER,
    ConversationNotFound,
    Member,
    MembershipChange,
    Relation,
    SendRequest,
    Storage,
    events_conversation_id,
)
from tests.storage.conftest import Backend
from tests.storage.test_conformance import NOW, send

GROUP_ID = "g:team"


def event(sender: str, cid: int, conversation_id: str = GROUP_ID) -> SendRequest:
    return SendRequest(conversation_id, sender, "phone", cid, "", f"ev-{sender}-{cid}",
                       NOW + cid, b"{}", "system/group")


async def make_group(storage: Storage, *members: str) -> None:
    change = MembershipChange(create=True, name="Team",
                              add=(("alice", OWNER), *((m, MEMBER) for m in members)))
    await storage.apply_membership(GROUP_ID, change, event("alice", 1))


async def test_events_conversation(storage: Storage) -> None:
    first = await storage.ensure_events("alice", NOW)
    again = await storage.ensure_events("alice", NOW + 1)
    assert first.conversation_id == again.conversation_id == events_conversation_id("alice")
    assert (first.kind, first.members, again.members) == (EVENTS, ("alice",), ("alice",))
    assert again.created_at_ms == NOW
    await storage.append(send(first.conversation_id, "alice", 1), ["alice"])
    assert await storage.conversations_of("alice", 10) == [], "events are not listed"


async def test_group_creation_is_a_sequenced_event(storage: Storage) -> None:
    change = MembershipChange(create=True, name="Team", add=(("alice", OWNER), ("bob", MEMBER)))
    result = await storage.apply_membership(GROUP_ID, change, event("alice", 1))
    assert (result.message.seq, result.duplicate) == (1, False)
    assert result.message.content_type == "system/group"
    assert sorted(i.user_id for i in result.inbox) == ["alice", "bob"]
    conv = await storage.conversation(GROUP_ID)
    assert conv is not None
    assert (conv.kind, conv.members, conv.head_seq) == (GROUP, ("alice", "bob"), 1)
    assert conv.extra.get("name") == "Team"
    assert await storage.members(GROUP_ID) == [Member("alice", OWNER, 1), Member("bob", MEMBER, 1)]
    again = await storage.apply_membership(GROUP_ID, change, event("alice", 1))
    assert again.duplicate and again.message == result.message and again.inbox == ()
    assert await storage.members("g:none") == []
    with pytest.raises(ConversationNotFound):
        await storage.apply_membership("g:none", MembershipChange(add=(("bob", MEMBER),)),
                                       event("alice", 2, "g:none"))


async def test_membership_changes_in_seq_order(storage: Storage) -> None:
    await make_group(storage, "bob", "carol")
    await storage.append(send(GROUP_ID, "bob", 1), ["alice", "bob", "carol"])
    added = await storage.apply_membership(
        GROUP_ID, MembershipChange(add=(("dave", MEMBER),), roles=(("bob", ADMIN),)),
        event("alice", 3))
    assert added.message.seq == 3
    assert sorted(i.user_id for i in added.inbox) == ["alice", "bob", "carol", "dave"]
    removed = await storage.apply_membership(
        GROUP_ID, MembershipChange(remove=("carol",), name="Team 2"), event("bob", 4))
    assert sorted(i.user_id for i in removed.inbox) == ["alice", "bob", "carol", "dave"], \
        "a removed member sees its removal"
    assert await storage.members(GROUP_ID) == [
        Member("alice", OWNER, 1), Member("bob", ADMIN, 1), Member("dave", MEMBER, 3)]
    assert await storage.membership_span("dave", GROUP_ID) == (3, 0)
    assert await storage.membership_span("carol", GROUP_ID) == (1, 4)
    assert await storage.membership_span("erin", GROUP_ID) is None
    conv = await storage.conversation(GROUP_ID)
    assert conv is not None and conv.extra.get("name") == "Team 2"
    assert conv.members == ("alice", "bob", "dave")
    chosen = await storage.apply_membership(GROUP_ID, MembershipChange(dissolve=True),
                                            event("alice", 5), recipients=["alice"])
    assert [i.user_id for i in chosen.inbox] == ["alice"]
    conv = await storage.conversation(GROUP_ID)
    assert conv is not None and "dissolved" in conv.extra and conv.head_seq == 5


async def test_read_positions_only_move_forward(storage: Storage) -> None:
    conv = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
    for n in range(1, 6):
        await storage.append(send(conv, "bob", n), ["alice", "bob"])
    assert await storage.mark_read("alice", conv, 3, dry_run=True) == (0, 3)
    assert await storage.mark_read("alice", conv, 3, dry_run=True) == (0, 3), "wrote nothing"
    assert await storage.mark_read("alice", conv, 3) == (0, 3)
    assert await storage.mark_read("alice", conv, 2) == (3, 3)
    assert await storage.mark_read("alice", conv, 99) == (3, 5), "clamped to the head"
    assert await storage.mark_read("carol", conv, 2) == (0, 0), "not a member"
    assert await storage.read_positions(conv) == {"alice": 5, "bob": 5}, \
        "one's own message counts as read"
    await make_group(storage, "bob")
    assert await storage.read_positions(GROUP_ID) == {"alice": 1, "bob": 0}


async def test_conversation_list_by_activity_with_unread(storage: Storage) -> None:
    ab = (await storage.ensure_direct("alice", "bob", NOW)).conversation_id
    ac = (await storage.ensure_direct("alice", "carol", NOW)).conversation_id
    await make_group(storage, "bob")
    await storage.append(send(ab, "bob", 10), ["alice", "bob"])
    await storage.append(send(ab, "bob", 11), ["alice", "bob"])
    await storage.append(send(ab, "alice", 12), ["alice", "bob"])
    await storage.append(send(ac, "carol", 20), ["alice", "carol"])
    await storage.append(send(GROUP_ID, "bob", 30), ["alice", "bob"])

    listed = await storage.conversations_of("alice", 10)
    assert [s.conversation_id for s in listed] == [GROUP_ID, ac, ab]
    group, with_carol, with_bob = listed
    assert (group.kind, group.name, group.members, group.head_seq) == (GROUP, "Team", 2, 2)
    assert group.unread == 1 and group.last_message is not None
    assert group.last_message.cid == 30 and group.last_activity_ms == NOW + 30
    assert (with_carol.kind, with_carol.name, with_carol.unread) == (DIRECT, "carol", 1)
    assert (with_bob.name, with_bob.head_seq, with_bob.members) == ("bob", 3, 2)
    assert (with_bob.read_seq, with_bob.unread) == (3, 0), "her own message read the rest"

    first = await storage.conversations_of("alice", 2)
    rest = await storage.conversations_of(
        "alice", 2, (first[-1].last_activity_ms, first[-1].conversation_id))
    assert [s.conversation_id for s in first + rest] == [GROUP_ID, ac, ab]
    await storage.mark_read("alice", ac, 1)
    assert [s.unread for s in await storage.conversations_of("alice", 10)] == [1, 0, 0]
    await storage.apply_membership(GROUP_ID, MembershipChange(remove=("bob",)),
                                   event("alice", 40))
    assert [s.conversation_id for s in await storage.conversations_of("bob", 10)] == [ab]


async def test_large_groups(storage: Storage) -> None:
    await make_group(storage, "bob", "carol")
    assert await storage.large_groups_of("bob", 2) == [(GROUP_ID, 1, 1)]
    assert await storage.large_groups_of("bob", 3) == []
    await storage.ensure_direct("bob", "alice", NOW)
    assert await storage.large_groups_of("bob", 1) == [(GROUP_ID, 1, 1)], "groups only"


async def test_relations(storage: Storage) -> None:
    assert await storage.relation("alice", "bob") == Relation()
    asked = Relation(request_sent=True, note="hi", updated_at_ms=NOW)
    await storage.put_relations([
        ("alice", "bob", asked),
        ("bob", "alice", Relation(request_received=True, note="hi", updated_at_ms=NOW)),
        ("alice", "carol", Relation(blocked=True, updated_at_ms=NOW)),
    ])
    assert await storage.relation("alice", "bob") == asked
    assert [other for other, _ in await storage.relations("alice")] == ["bob", "carol"]
    await storage.put_relations([
        ("alice", "bob", Relation(friend=True, updated_at_ms=NOW + 1)),
        ("alice", "carol", Relation(updated_at_ms=NOW + 1)),  # empty: removed
    ])
    assert await storage.relations("alice") == [("bob", Relation(friend=True,
                                                                 updated_at_ms=NOW + 1))]
    assert (await storage.relation("bob", "alice")).request_received


async def test_invitations_are_taken_once(storage: Storage) -> None:
    await storage.put_invitation(GROUP_ID, "bob", "alice", NOW)
    assert await storage.take_invitation(GROUP_ID, "bob") == "alice"
    assert await storage.take_invitation(GROUP_ID, "bob") is None
    assert await storage.take_invitation(GROUP_ID, "nobody") is None


async def test_invitations_are_listed_by_user_newest_first(storage: Storage) -> None:
    await storage.put_invitation("g:one", "bob", "alice", NOW)
    await storage.put_invitation("g:two", "bob", "carol", NOW + 5)
    await storage.put_invitation("g:two", "dave", "carol", NOW + 5)
    assert await storage.invitations("bob") == [("g:two", "carol", NOW + 5),
                                                ("g:one", "alice", NOW)]
    assert await storage.take_invitation("g:two", "bob") == "carol"
    assert await storage.invitations("bob") == [("g:one", "alice", NOW)]
    assert await storage.invitations("dave") == [("g:two", "carol", NOW + 5)]
    assert await storage.invitations("nobody") == []


async def test_membership_survives_reopen(backend: Backend) -> None:
    first = await backend.open()
    await make_group(first, "bob")
    await first.mark_read("bob", GROUP_ID, 1)
    await first.close()
    backend.opened.remove(first)
    second = await backend.open()
    assert [m.user_id for m in await second.members(GROUP_ID)] == ["alice", "bob"]
    assert await second.read_positions(GROUP_ID) == {"alice": 1, "bob": 1}
    result = await second.apply_membership(GROUP_ID, MembershipChange(add=(("carol", MEMBER),)),
                                           event("alice", 2))
    assert result.message.seq == 2


async def test_a_big_group_in_one_change(storage: Storage) -> None:
    """Hundreds of members added by one event (read diffusion: the event goes
    to the inboxes the caller names, here the owner's only)."""
    users = [f"user{n:04d}" for n in range(400)]
    change = MembershipChange(create=True, name="Big",
                              add=(("alice", OWNER), *((u, MEMBER) for u in users)))
    result = await storage.apply_membership(GROUP_ID, change, event("alice", 1),
                                            recipients=["alice"])
    assert [i.user_id for i in result.inbox] == ["alice"]
    members = await storage.members(GROUP_ID)
    assert len(members) == 401 and members[0] == Member("alice", OWNER, 1)
    assert await storage.large_groups_of("user0123", 400) == [(GROUP_ID, 1, 1)]
    assert await storage.inbox_head("user0123") == 0
    assert (await storage.conversations_of("user0399", 5))[0].members == 401
