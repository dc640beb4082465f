"""Group consent on a real server: adding users who are not your friends
invites them (an "invitation" event on their devices, listed by
invitations()); they join or decline. Friends are added at once, the admin
API adds anyone, and with abuse.group_add_requires_consent=0 anyone is added.
The SDK splits a member list over the per-request limit itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client, ErrorCode, RequestError
from tests.support.server import ServerProcess
from tests.support.social import admin_group, befriend
from tests.support.traffic import next_event

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("open"),
                         env={"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"})
    proc.start()
    yield proc
    proc.stop()


async def connect(server: ServerProcess, signer: TokenSigner, user: str,
                  device: str = "phone") -> Client:
    client = Client(server.url, signer.mint(user, device))
    await client.connect()
    return client


async def refused(code: ErrorCode, call: object) -> None:
    with pytest.raises(RequestError) as err:
        await call  # type: ignore[misc]
    assert err.value.code == code, err.value


async def test_strangers_are_invited_friends_are_added(server: ServerProcess,
                                                       signer: TokenSigner) -> None:
    owner, friend, stranger = [await connect(server, signer, u) for u in ("ola", "fia", "sten")]
    stranger_laptop = await connect(server, signer, "sten", "laptop")
    shy = await connect(server, signer, "shy")
    await befriend(owner, [friend])
    group = await owner.create_group("team", ["fia", "sten", "shy"])
    assert sorted(owner.last_invited) == ["shy", "sten"]
    assert [m.user_id for m in await owner.members(group)] == ["fia", "ola"]
    await refused(ErrorCode.FORBIDDEN, stranger.send_text(group, "not yet"))
    # the invitation reaches every device of the invitee, and is listed
    for device in (stranger, stranger_laptop):
        event = await next_event(device, "invitation")
        assert event.detail == {"conversation_id": group, "inviter": "ola", "name": "team"}
    [invitation] = await stranger.invitations()
    assert (invitation.conversation_id, invitation.inviter, invitation.name) == (group, "ola",
                                                                                "team")
    await stranger.join(group)
    assert await stranger.invitations() == []
    assert (await stranger.send_text(group, "in")).seq > 0
    # a decline: gone from the list, and join no longer works
    await shy.decline(group)
    assert await shy.invitations() == []
    await refused(ErrorCode.FORBIDDEN, shy.join(group))
    await refused(ErrorCode.NOT_FOUND, shy.decline(group))
    # add_members: the same rule
    late = await connect(server, signer, "late")
    await owner.add_members(group, ["late"])
    assert owner.last_invited == ["late"]
    assert [i.conversation_id for i in await late.invitations()] == [group]
    # someone who blocks the owner gets nothing (and the owner is not told)
    await late.block("ola")
    loner = await connect(server, signer, "loner")
    await loner.block("ola")
    await owner.add_members(group, ["loner"])
    assert await loner.invitations() == []
    # the admin API adds without asking
    built = await admin_group(server.admin_url, server.data_dir, "ola", "ops", ["sten", "shy"])
    assert [m.user_id for m in await owner.members(built)] == ["ola", "shy", "sten"]
    for c in (owner, friend, stranger, stranger_laptop, shy, late, loner):
        await c.close()


async def test_long_member_lists_are_split_by_the_sdk(open_server: ServerProcess) -> None:
    """9,999 members (a single GroupCreate of them is over 64 KiB): the SDK
    sends them in requests the server takes; with consent off all are added."""
    signer = TokenSigner.from_data_dir(open_server.data_dir)
    owner = await connect(open_server, signer, "boss")
    assert owner.max_users_per_request == 1000
    members = [f"member-{i:05d}-" + "x" * 48 for i in range(9999)]  # 63-byte ids
    requests = owner.requests
    group = await owner.create_group("huge", members)
    # by bytes (about 1,000 ids of 66 bytes fill a 64 KiB frame) before count
    assert 10 <= owner.requests - requests <= 12, owner.requests - requests
    assert owner.reconnects == 0 and owner.last_invited == []
    listed = await owner.members(group, limit=5000)
    assert len(listed) == 5000
    more = await owner.members(group, after_user_id=listed[-1].user_id, limit=5000)
    assert len(listed) + len(more) == 10_000
    await owner.close()


@pytest.fixture(scope="module")
def stingy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("stingy"), env={
        "CHATPLANE_INVITE_BURST_PER_USER": "5", "CHATPLANE_INVITE_RATE_PER_USER_S": "1"})
    proc.start()
    yield proc
    proc.stop()


async def test_invitations_are_paced_per_inviter(stingy_server: ServerProcess) -> None:
    """A user cannot spray invitations at strangers: past the burst a request
    that would invite more is refused whole (retriable), nothing invited."""
    from chatplane.v1 import frames_pb2 as pb

    signer = TokenSigner.from_data_dir(stingy_server.data_dir)
    owner = await connect(stingy_server, signer, "spam")
    group = await owner.create_group("ads", [f"target{i}" for i in range(4)])
    assert len(owner.last_invited) == 4
    with pytest.raises(RequestError) as err:
        await owner._request(pb.Frame(group_op=pb.GroupOp(
            conversation_id=group, action=pb.INVITE, user_ids=["t5", "t6", "t7"])), attempts=1)
    assert err.value.code == ErrorCode.RATE_LIMITED and err.value.retriable
    victim = await connect(stingy_server, signer, "t5")
    assert await victim.invitations() == []
    await asyncio.sleep(2.2)  # two more tokens
    await owner.invite(group, ["t5", "t6"])
    assert [i.conversation_id for i in await victim.invitations()] == [group]
    await owner.close()
    await victim.close()
