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

The same ring names each user's inbox writer (the owner of "u:<user>"): a
message's entries for users served elsewhere are written by their owner
(`Im.FanOut`, im/inboxes.py), with no next instance. An owner that cannot
be reached (gone: the connection is refused) is written around here, a take
of each of its inboxes, counted in `fan_outs_kept`. UNAVAILABLE does not
prove that: a call whose connection or stream broke after it was sent may
have been applied (the owner finishes a fan-out whose caller left), and a
write here beside the owner's write that does not look (`fresh`) would be a
second entry of the message in the inbox. So an UNAVAILABLE call is asked
again of the owner once (`fan_outs_asked_again`), on a new stream, without
`fresh`: the owner finishes the first call's write first and then finds its
entries (im/inboxes.py). Only an owner that does not answer that either is
written around. An owner that is slow, or whose storage refused, is not:
writing around a live owner takes its inboxes, its next write takes them
back, and under load each take makes the next call slower still (lease
ping-pong). Its entries stay owed and the senders get a retriable error,
until it answers or the ring drops it.
The fan-outs of different conversations bound for one owner share calls
(`Im.FanOutMany`, rpc/batching.py `SharedCalls`; each conversation's answer
is its own), as batches on one long-lived stream per owner
(`Im.FanOutManyStream`, rpc/streams.py), with `Im.FanOutMany` and then
`Im.FanOut` for an owner of an earlier version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Sequence

import grpc

from chatplane.protocol.bounds import MAX_FANOUTS_PER_CALL
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.registry.instances import CachedInstances, LiveRing
from chatplane.registry.ring import ring_key
from chatplane.rpc.batching import SharedCalls
from chatplane.rpc.peers import Peers
from chatplane.rpc.streams import Streams
from chatplane.storage.base import SendRequest, StorageUnavailable, events_conversation_id
from chatplane.v1 import frames_pb2 as pb
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
        self.fan_outs_forwarded = 0  # FanOut calls their inbox owner answered
        self.fan_outs_kept = 0  # inbox owners that did not answer: written here
        self.fan_outs_asked_again = 0  # UNAVAILABLE calls asked again (they may have run)
        self.sends_forwarded = 0  # other regions' sends handed to their owner here
        # the fan-outs of different conversations to one owner share calls
        self._shared: SharedCalls[spb.FanOutRequest, spb.FanOutReply] = SharedCalls(
            self._fan_out_many, spb.FanOutRequest.ByteSize, max_batch=MAX_FANOUTS_PER_CALL)
        self._no_many: set[str] = set()  # owners that answered FanOutMany UNIMPLEMENTED
        self.fan_out_streams: Streams[spb.FanOutRequests, spb.FanOutReplies, sgrpc.ImStub] = (
            Streams(peers, "im", "Im.FanOutMany", sgrpc.ImStub,
                    lambda stub: stub.FanOutManyStream, lambda stub: stub.FanOutMany))

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

    def on_ring(self) -> bool:
        """Whether this instance is on the ring as last read (its registry entry seen)."""
        return self.instance_id in self.ring.members

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
                await self.peers.stub(address, "im", sgrpc.ImStub).AppendEvent(
                    rpc, timeout=self.peers.deadline_s / 4)
            except grpc.aio.AioRpcError:
                continue  # dead, stalled or refusing: the next one, or here
            self.forwarded += 1
            return True
        self.kept += 1
        return False

    async def send_at_owner(self, request: SendRequest, timeout_s: float) -> pb.Frame | None:
        """A send another region forwarded to this region's home (`Region.Send`, which
        any im may serve), handled by its conversation's owner (`Im.Handle`, as a
        gateway sends it), so the conversation's lease stays where the ring puts it.
        The owner's reply frame (a SendAck or an Error); None: this instance owns it,
        or no instance before it answered (the caller sequences it here: the fence
        keeps that safe). An owner that does not answer within `timeout_s` (the send
        may wait for another region's confirmation, `sync`) is not written around: the
        send fails UNAVAILABLE and the region that forwarded it retries."""
        frame = pb.Frame(id=1, send=pb.Send(
            conversation_id=request.conversation_id, cid=request.cid, text=request.text,
            payload=request.payload, content_type=request.content_type))
        rpc = spb.ClientRequest(user_id=request.sender, device_id=request.sender_device,
                                frame=frame.SerializeToString())
        for address in await self._ahead(request.conversation_id):
            try:
                reply = await self.peers.stub(address, "im", sgrpc.ImStub).Handle(
                    rpc, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.UNAVAILABLE:
                    continue  # dead, or not the owner any more: the next one, or here
                raise ProtocolError(ErrorCode.UNAVAILABLE, f"the owner of"
                                    f" {request.conversation_id!r} did not answer"
                                    f" ({exc.code().name}): resend") from exc
            self.sends_forwarded += 1
            return pb.Frame.FromString(reply.frame)
        return None

    async def inbox_owners(self, users: Iterable[str]) -> dict[str, str]:
        """user -> address of the instance that sequences the user's inbox,
        for the users another instance owns (absent: this one, or this
        instance is not on the ring yet and writes everything itself)."""
        await self.ring.owners("")  # refreshes the ring (cached for a second)
        if self.instance_id not in self.ring.members:
            return {}
        out = {}
        for user in users:
            owners = self.ring.ring.owners(ring_key(events_conversation_id(user)))
            owner = owners[0] if owners else self.instance_id
            if owner != self.instance_id and owner in self.ring.addresses:
                out[user] = self.ring.addresses[owner]
        return out

    async def fan_out(self, address: str, conversation_id: str,
                      entries: Sequence[tuple[int, Sequence[str]]],
                      fresh: Collection[int], *, again: bool = False) -> bool:
        """Ask the instance at `address` to write (or find) these inbox
        entries and deliver them. False: it cannot be reached, asked twice
        (the caller writes them itself, looking for what it wrote).
        StorageUnavailable: it is slow or refused (they stay owed)."""
        rpc = spb.FanOutRequest(conversation_id=conversation_id, entries=[
            spb.FanOutEntry(seq=seq, user_ids=list(users), fresh=seq in fresh)
            for seq, users in entries])
        try:
            if address in self._no_many:  # an instance of an earlier version
                await self.peers.stub(address, "im", sgrpc.ImStub).FanOut(
                    rpc, timeout=self.peers.deadline_s)
            else:
                try:  # (waiting for a call and the call: one deadline, as FanOut's)
                    reply = await asyncio.wait_for(self._shared.ask(address, rpc),
                                                   self.peers.deadline_s)
                except TimeoutError as exc:
                    raise StorageUnavailable(
                        f"the inbox owner at {address} did not fan out in time") from exc
                if reply.failed:
                    raise StorageUnavailable(
                        f"the inbox owner at {address} did not fan out: {reply.failed}")
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and address not in self._no_many:
                self._no_many.add(address)
                return await self.fan_out(address, conversation_id, entries, fresh, again=again)
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise StorageUnavailable(
                    f"the inbox owner at {address} did not fan out ({exc.code().name})") from exc
            if not again:  # it may have run: the owner looks this time (see the docstring)
                self.fan_outs_asked_again += 1
                return await self.fan_out(address, conversation_id, entries, (), again=True)
            self.fan_outs_kept += 1
            return False
        self.fan_outs_forwarded += 1
        return True

    @property
    def fan_out_calls(self) -> int:
        """Im.FanOutMany calls made."""
        return self._shared.calls

    async def _fan_out_many(self, address: str,
                            requests: list[spb.FanOutRequest]) -> list[spb.FanOutReply]:
        reply = await self.fan_out_streams.call(
            address, spb.FanOutRequests(requests=requests), self.peers.deadline_s)
        return list(reply.replies)
