"""Server-made appends go to the conversation's owner (cluster only).

Gateways route a request to the owner of its conversation, or of its user
(im/client.py); but a request also makes events for *other* users (a
friend request, a read receipt, an invitation), and each lands in that
user's event conversation ("u:<user>"), which the ring gives to the
instance serving that user. Appending it here would take that
conversation's lease from its owner (a conditional write, and both
instances dropping their caches of it) and the owner's next append would
take it back: lease ping-pong. So the event is forwarded to the owner
(`Im.AppendEvent`), on the next instance of the ring if that one fails,
like the gateway does; when no instance before this one in ring order
answers, it is appended here, taking the lease (the fence keeps that safe).
Each try gets a quarter of the RPC deadline and there is one round: the
request that made the event runs inside the gateway's deadline, and a
request cancelled there after its change but before its events would lose
them (a dead owner refuses at once; a stalled one costs one lease move).

The maker's (device, cid, message_id) travel with the event, and storage
appends are idempotent on (sender, device, cid): a retried forward, or the
local append after a forward whose reply was lost, stores the event once.
"""

from __future__ import annotations

import grpc

from chatplane.registry.instances import CachedInstances, LiveRing
from chatplane.registry.ring import ring_key
from chatplane.rpc.peers import Peers
from chatplane.storage.base import SendRequest
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc


class ImRing:
    """This instance's view of the im ring: who owns what, and forwarding."""

    def __init__(self, instance_id: str, peers: Peers, registry: CachedInstances) -> None:
        self.instance_id = instance_id
        self.peers = peers
        self.ring = LiveRing((), registry)
        self.forwarded = 0  # events appended by their owner at this instance's request
        self.kept = 0  # events appended here: no owner before this one answered

    async def _ahead(self, conversation_id: str) -> list[str]:
        """Addresses of the instances before this one in the key's ring order
        (the owner first); empty when this instance owns it."""
        ahead = []
        for instance, address in await self.ring.owners(ring_key(conversation_id)):
            if instance == self.instance_id:
                break
            ahead.append(address)
        return ahead

    async def owns(self, conversation_id: str) -> bool:
        """True when the ring gives this instance the conversation (or this
        instance is not on the ring yet, before its first registry entry)."""
        ahead = await self._ahead(conversation_id)
        return not ahead or self.instance_id not in self.ring.members

    async def append_event(self, request: SendRequest) -> bool:
        """Have the owner of `request`'s event conversation append it. False:
        this instance owns it, or no instance before it answered in time;
        the caller appends it itself (with the same key: once, whatever the
        owner did)."""
        ahead = await self._ahead(request.conversation_id)
        if not ahead:
            return False
        rpc = spb.AppendEventRequest(
            user_id=request.sender, device=request.sender_device, cid=request.cid,
            message_id=request.message_id, sent_at_ms=request.sent_at_ms,
            content_type=request.content_type, payload=request.payload)

        for address in ahead:
            try:
                await sgrpc.ImStub(self.peers.channel(address, "im")).AppendEvent(
                    rpc, timeout=self.peers.deadline_s / 4)
            except grpc.aio.AioRpcError:
                continue  # dead, stalled or refusing: the next one, or here
            self.forwarded += 1
            return True
        self.kept += 1
        return False
