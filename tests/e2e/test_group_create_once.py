"""A group create is idempotent on its key (user, device, GroupCreate.cid) on a
real `chatplane up`: the same create resent on a new connection of the device
(its first reply lost to a cut) answers the same group, stores one group and
invites each invitee once; another cid or another device makes another group."""

from __future__ import annotations

import sqlite3

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.storage.base import events_conversation_id
from chatplane.v1 import frames_pb2 as pb
from tests.support.server import ServerProcess


async def create(server: ServerProcess, signer: TokenSigner, device: str,
                 cid: int) -> pb.GroupOpAck:
    """One GroupCreate on a connection of its own (closed after its reply, as a
    cut would), through the SDK's request path."""
    client = Client(server.url, signer.mint("gc-ann", device))
    await client.connect()
    try:
        reply = await client._request(pb.Frame(group_create=pb.GroupCreate(
            name="once", members=["gc-bob"], cid=cid)))
    finally:
        await client.close()
    return reply.group_op_ack


def stored(server: ServerProcess) -> tuple[int, int, int]:
    """(groups, bob's pending invitations, bob's invitation events) in the store."""
    db = sqlite3.connect(server.data_dir / "chatplane.db", timeout=10)
    try:
        groups = db.execute("SELECT count(*) FROM conversations WHERE kind = 'group'").fetchone()
        pending = db.execute("SELECT count(*) FROM invitations WHERE user_id = 'gc-bob'"
                             ).fetchone()
        events = db.execute("SELECT count(*) FROM messages WHERE conversation_id = ?"
                            " AND content_type = 'event/invitation'",
                            (events_conversation_id("gc-bob"),)).fetchone()
    finally:
        db.close()
    return int(groups[0]), int(pending[0]), int(events[0])


async def test_a_resent_create_answers_the_same_group(server: ServerProcess,
                                                      signer: TokenSigner) -> None:
    first = await create(server, signer, "phone", 41)
    again = await create(server, signer, "phone", 41)  # the resend after a cut
    assert (again.conversation_id, again.seq, list(again.invited)) == (
        first.conversation_id, first.seq, ["gc-bob"])
    assert stored(server) == (1, 1, 1)

    # the key is the create's: another cid, or the same cid from another device, is another
    other_cid = await create(server, signer, "phone", 42)
    other_device = await create(server, signer, "laptop", 41)
    assert len({first.conversation_id, other_cid.conversation_id,
                other_device.conversation_id}) == 3
    assert stored(server) == (3, 3, 3)

    # the SDK keys each create_group call anew: two calls, two groups
    ann = Client(server.url, signer.mint("gc-ann", "phone"))
    await ann.connect()
    try:
        made = {await ann.create_group("twice", []) for _ in range(2)}
        assert len(made) == 2
        groups = [c.conversation_id for c in await ann.conversations() if c.kind == "group"]
        assert sorted(groups) == sorted({first.conversation_id, other_cid.conversation_id,
                                         other_device.conversation_id, *made})
    finally:
        await ann.close()
