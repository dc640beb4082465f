"""A gateway's credential does not get a caller past the bounds: the im tier of
a real `cluster up` answers out-of-bounds `Im.*` calls over gRPC itself
(docs/protocol.md, "Bounds on every field"), and keeps serving. (Callers
without a tier identity are refused before that: tests/cluster/test_link_security.py.)"""

from __future__ import annotations

import grpc
import pytest

from chatplane import settings as settings_mod
from chatplane.protocol.errors import ErrorCode
from chatplane.rpc.linksecurity import LinkSecurity, links_secret
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.cluster.conftest import ClusterFactory

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_im_refuses_out_of_bounds_calls_even_from_a_gateway(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=1, ims=1, states=1)
    im = cluster.members[cluster.names("im")[0]]
    settings = settings_mod.load(environ={"CHATPLANE_ADMIN_SECRET": cluster.admin_secret})
    gateway = LinkSecurity("gateway", secret=links_secret(settings))
    async with gateway.open_channel(f"127.0.0.1:{im.grpc_port}", "im", []) as channel:
        stub = sgrpc.ImStub(channel)

        async def handle(frame: bytes, user: str = "mallory") -> pb.Frame:
            reply = await stub.Handle(spb.ClientRequest(user_id=user, device_id="d", frame=frame),
                                      timeout=5)
            return pb.Frame.FromString(reply.frame)

        for body in (pb.Frame(id=4, send=pb.Send(conversation_id="d:alice:bob", cid=2**64 - 1)),
                     pb.Frame(id=4, history=pb.HistoryRequest(conversation_id="c",
                                                              before_seq=2**63)),
                     pb.Frame(id=4, sync=pb.SyncRequest(after_inbox_seq=2**64 - 1))):
            reply = await handle(body.SerializeToString())
            assert (reply.id, reply.error.code) == (4, ErrorCode.INVALID_ARGUMENT), reply
            assert reply.error.message.endswith("above 2^63-1"), reply
        assert (await handle(b"\xff\xff\xff")).error.code == ErrorCode.BAD_FRAME
        friends = pb.Frame(id=5, friends=pb.FriendsRequest()).SerializeToString()
        assert (await handle(friends, "u" * 65)).error.code == ErrorCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AppendEvent(spb.AppendEventRequest(
                user_id="alice", device="x", cid=1, sent_at_ms=2**64 - 1,
                content_type="event/read"), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "append_event.sent_at_ms" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.InboxHeads(spb.InboxHeadsRequest(user_ids=["u"] * 10_001), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # still serving: an in-bounds request is answered
        assert (await handle(friends)).WhichOneof("body") == "friends_response"
