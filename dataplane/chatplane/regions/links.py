"""The cross-region link over gRPC: the `Region` service a region serves on its gRPC port,
and the prober that says `Hello` to every peer on an interval, each call with a deadline.

What the prober saw is served as `GET /v1/peers` (per peer: reachable, consistent, last
success, round trip, last error, when the peer last said Hello to us), summarized in
`/readyz` details, and exported as `chatplane_peer_*` gauges. A peer that cannot be
reached never makes this region unready: regions serve on their own (active-active).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from prometheus_client.metrics_core import Metric

from chatplane import metrics, peerlist
from chatplane.peerlist import Peer
from chatplane.protocol import bounds
from chatplane.protocol.errors import ProtocolError
from chatplane.regions import hello
from chatplane.regions.homes import Homes, LocalAdminChange, LocalGroupOp, LocalSend
from chatplane.regions.moving import MoveConflict, Moves
from chatplane.regions.notices import NoticeFollower, Notices
from chatplane.regions.replication import BeyondLog, Replication
from chatplane.regions.social import LocalFriendOp, SocialHomes
from chatplane.regions.user_moves import UserMoves
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from chatplane.rpc.serving import refuse_out_of_bounds
from chatplane.settings import Settings
from chatplane.storage.base import USER_HOME, LogTrimmed
from chatplane.supervision import Supervisor
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import regions_pb2 as rpb
from chatplane.v1 import regions_pb2_grpc as rgrpc

log = logging.getLogger("chatplane.regions")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this region is, as Hello says it."""

    region: str
    cluster: str
    server_id: str
    prove: hello.Prover  # TokenSigner.peer_proof


@dataclass
class PeerLink:
    """What the probes of one peer found so far (times are wall-clock seconds)."""

    peer: Peer
    reachable: bool = False
    verdict: hello.Verdict | None = None
    answered_as: tuple[str, str, int, str] = ("", "", 0, "")  # region, cluster, protocol, id
    error: str = "not probed yet"
    last_ok: float | None = None
    ok_sent_at: float | None = None  # when the last answered Hello was sent
    last_probe: float | None = None
    rtt_s: float | None = None
    probes: int = 0
    failures: int = 0
    heard_at: float | None = None  # when the peer last said Hello to us

    @property
    def ok(self) -> bool:
        return self.reachable and self.verdict is not None and self.verdict.ok

    def answered(self, reply: rpb.HelloReply, verdict: hello.Verdict, rtt_s: float,
                 now: float) -> None:
        self.reachable, self.verdict, self.rtt_s = True, verdict, rtt_s
        self.answered_as = (reply.region, reply.cluster, reply.protocol, reply.server_id)
        self.error = "; ".join(verdict.problems)
        self.last_ok = now
        self.ok_sent_at = self.last_probe  # set as this probe began

    def failed(self, error: str) -> None:
        if self.reachable or error != self.error:
            log.warning("peer %s (%s) unreachable: %s", self.peer.name, self.peer.endpoint, error)
        self.reachable, self.error, self.rtt_s = False, error, None
        self.failures += 1

    def view(self, now: float) -> dict[str, Any]:
        def ago(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        region, cluster, protocol, server_id = self.answered_as
        return {
            "name": self.peer.name, "endpoint": self.peer.endpoint,
            "datacenter": self.peer.datacenter,
            "reachable": self.reachable, "ok": self.ok, "error": self.error,
            # what the last answered Hello said (also while the peer is unreachable now)
            "last_answer": None if self.verdict is None else {
                "region": region, "cluster": cluster, "protocol": protocol,
                "server_id": server_id, "key_match": self.verdict.key_match},
            "last_ok_s_ago": ago(self.last_ok), "last_probe_s_ago": ago(self.last_probe),
            "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 3),
            "probes": self.probes, "failures": self.failures,
            "heard_from_s_ago": ago(self.heard_at),
        }


@dataclass(frozen=True, slots=True)
class Sequencing:
    """What the link carries besides Hello, where the store keeps a replicated log:
    home placement, forwarded sends (sequenced by `send`), forwarded group changes
    (applied by `group_op`, and `admin_change` for the admin API's) and the log."""

    homes: Homes
    replication: Replication
    send: LocalSend
    group_op: LocalGroupOp
    admin_change: LocalAdminChange
    moves: Moves
    social: SocialHomes
    friend_op: LocalFriendOp  # the deciding home's own handling of a forwarded change
    user_moves: UserMoves | None = None  # admin moves of users' homes (the embedded store)


@dataclass(frozen=True, slots=True)
class SharedSequencing:
    """What the link carries on a keyspace the regions share (CQL, regions/notices.py):
    forwarded sends and group changes to the home, and the home's notices; no home
    offers (the shared `homes` row decides) and no log (the database copies rows)."""

    homes: Homes
    send: LocalSend
    group_op: LocalGroupOp
    admin_change: LocalAdminChange
    notices: Notices
    follower: NoticeFollower


Forwarding = Sequencing | SharedSequencing


class RegionServicer(rgrpc.RegionServicer):
    def __init__(self, me: Identity, prober: PeerProber,
                 sequencing: Sequencing | None = None,
                 shared: SharedSequencing | None = None) -> None:
        self.me = me
        self.prober = prober
        self.sequencing = sequencing
        self.shared = shared

    async def _forwarding(self, context: grpc.aio.ServicerContext) -> Forwarding:
        if self.shared is not None:
            return self.shared
        return await self._sequencing(context)

    async def Notify(self, request: rpb.NotifyRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.NoticeBatch]:
        await refuse_out_of_bounds(context, "notify", request)
        if self.shared is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"region {self.me.region} shares no keyspace")
        assert self.shared is not None
        async for batch in self.shared.notices.serve(request):
            yield batch

    async def _sequencing(self, context: grpc.aio.ServicerContext) -> Sequencing:
        if self.sequencing is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"region {self.me.region} keeps no replicated log")
        assert self.sequencing is not None
        return self.sequencing

    async def OfferHome(self, request: rpb.HomeOffer,
                        context: grpc.aio.ServicerContext) -> rpb.HomeRow:
        await refuse_out_of_bounds(context, "offer_home", request)
        return await (await self._sequencing(context)).homes.offered(request)

    async def Send(self, request: rpb.ForwardedSend,
                   context: grpc.aio.ServicerContext) -> rpb.ForwardedAck:
        await refuse_out_of_bounds(context, "forwarded_send", request)
        sequencing = await self._forwarding(context)
        return await sequencing.homes.serve_send(request, sequencing.send)

    async def GroupOp(self, request: rpb.ForwardedGroupOp,
                      context: grpc.aio.ServicerContext) -> rpb.ForwardedGroupAck:
        await refuse_out_of_bounds(context, "forwarded_group_op", request,
                                   bounds.problem("group_op", request.op, bounds.Bounds()))
        sequencing = await self._forwarding(context)
        return await sequencing.homes.serve_group(request.op.conversation_id, lambda: (
            sequencing.group_op(request.user_id, request.device_id, request.op)))

    async def AdminGroupChange(self, request: rpb.ForwardedAdminChange,
                               context: grpc.aio.ServicerContext) -> rpb.ForwardedGroupAck:
        await refuse_out_of_bounds(context, "forwarded_admin_change", request)
        sequencing = await self._forwarding(context)

        async def apply() -> pb.GroupOpAck:
            seq = await sequencing.admin_change(request.conversation_id, list(request.add),
                                                list(request.remove), request.dissolve)
            return pb.GroupOpAck(conversation_id=request.conversation_id, seq=seq)

        return await sequencing.homes.serve_group(request.conversation_id, apply)

    async def FriendOp(self, request: rpb.ForwardedFriendOp,
                       context: grpc.aio.ServicerContext) -> rpb.ForwardedFriendAck:
        await refuse_out_of_bounds(context, "forwarded_friend_op", request,
                                   bounds.problem("friend_op", request.op, bounds.Bounds()))
        sequencing = await self._sequencing(context)
        return await sequencing.social.serve_friend_op(request, sequencing.friend_op)

    async def Replicate(self, request: rpb.ReplicateRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[rpb.LogBatch]:
        await refuse_out_of_bounds(context, "replicate", request)
        sequencing = await self._sequencing(context)
        try:
            async for batch in sequencing.replication.serve(request):
                yield batch
        except BeyondLog as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except LogTrimmed as exc:  # the reader would miss entries: it must resync
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    async def Applied(self, request: rpb.AppliedRequest,
                      context: grpc.aio.ServicerContext) -> rpb.AppliedReply:
        await refuse_out_of_bounds(context, "applied", request)
        try:
            return await (await self._sequencing(context)).replication.applied_by(request)
        except BeyondLog as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this keeps the type checker sure of it

    async def HandOff(self, request: rpb.HandOffRequest,
                      context: grpc.aio.ServicerContext) -> rpb.HandOffReply:
        await refuse_out_of_bounds(context, "hand_off", request)
        sequencing = await self._sequencing(context)
        try:
            if request.kind == USER_HOME:
                if sequencing.user_moves is None:
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                        f"region {self.me.region} moves no user homes")
                assert sequencing.user_moves is not None
                return await sequencing.user_moves.hand_off(request)
            return await sequencing.moves.hand_off(request)
        except MoveConflict as exc:  # another region's move of it is under way
            await context.abort(grpc.StatusCode.ABORTED, exc.message)
            raise
        except ProtocolError as exc:  # not handed off (a peer behind): the caller gives up
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
            raise

    async def Fence(self, request: rpb.FenceRequest,
                    context: grpc.aio.ServicerContext) -> rpb.FenceReply:
        await refuse_out_of_bounds(context, "fence", request)
        fences = (await self._sequencing(context)).replication.fences
        if fences is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                f"region {self.me.region} runs no failover")
        assert fences is not None
        return await fences.serve(request)

    async def Hello(self, request: rpb.HelloRequest,
                    context: grpc.aio.ServicerContext) -> rpb.HelloReply:
        await refuse_out_of_bounds(context, "hello", request)
        self.prober.heard(request.region)
        return rpb.HelloReply(
            region=self.me.region, cluster=self.me.cluster, protocol=hello.PROTOCOL,
            key_proof=hello.key_proof(self.me.prove, request.nonce, self.me.region),
            server_id=self.me.server_id)


class PeerProber:
    """Probes every peer every `interval_s` (jittered), each Hello bounded by `timeout_s`."""

    def __init__(self, me: Identity, peers: Sequence[Peer], interval_s: float,
                 timeout_s: float, security: LinkSecurity) -> None:
        self.me = me
        self.links = {p.name: PeerLink(p) for p in peers}
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._channels = Peers(timeout_s, security.for_peer_regions(me.region))
        self._tasks: list[asyncio.Task[None]] = []
        # per peer, what else /v1/peers shows of it (replication)
        self.extra: Callable[[], dict[str, dict[str, Any]]] = dict
        # what else /v1/peers shows of this region (its replicated log)
        self.extra_region: Callable[[], dict[str, Any]] = dict

    def channel(self, name: str) -> grpc.aio.Channel:
        """The channel to peer region `name` (shared by every call of the link)."""
        return self._channels.channel(self.links[name].peer.endpoint, "im")

    def heard(self, region: str) -> None:
        link = self.links.get(region)
        if link is not None:
            link.heard_at = time.time()

    async def probe(self, link: PeerLink) -> None:
        stub = rgrpc.RegionStub(self.channel(link.peer.name))
        nonce = hello.new_nonce()
        request = rpb.HelloRequest(region=self.me.region, cluster=self.me.cluster,
                                   protocol=hello.PROTOCOL, nonce=nonce)
        started = time.monotonic()
        link.probes += 1
        link.last_probe = time.time()
        try:
            reply = await stub.Hello(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            link.failed(f"{exc.code().name}: {exc.details()}")
            return
        verdict = hello.judge(self.me.prove, link.peer.name, nonce, reply.region,
                              reply.protocol, reply.key_proof)
        if not verdict.ok and (link.verdict is None or link.verdict.ok):
            log.warning("peer %s: %s", link.peer.name, "; ".join(verdict.problems))
        link.answered(reply, verdict, time.monotonic() - started, time.time())

    async def _run(self, link: PeerLink) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.probe(link)
            except Exception as exc:  # a dead loop would freeze a stale "reachable"
                log.exception("probe of peer %s failed", link.peer.name)
                link.failed(f"probe failed: {exc!r}")
            pause = self.interval_s * random.uniform(0.9, 1.1) - (time.monotonic() - started)
            await asyncio.sleep(max(0.0, pause))

    def start(self, supervisor: Supervisor) -> None:
        self._tasks = [supervisor.spawn(f"peer-probe:{name}", functools.partial(self._run, link))
                       for name, link in self.links.items()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._channels.close()

    # -- what the HTTP side shows ---------------------------------------------------

    def report(self) -> dict[str, Any]:
        now = time.time()
        extra = self.extra()
        return {"region": self.me.region, "cluster": self.me.cluster,
                "protocol": hello.PROTOCOL, "server_id": self.me.server_id,
                "interval_s": self.interval_s, **self.extra_region(),
                "peers": [{**link.view(now), **({"replication": extra[name]}
                                                 if name in extra else {})}
                          for name, link in self.links.items()]}

    def summary(self) -> dict[str, Any]:
        """For /readyz: peer name -> whether it answers as expected."""
        return {"peers": {name: link.ok for name, link in self.links.items()}}

    def families(self) -> Iterator[Metric]:
        """Per peer: reachable, answering as expected, round trip, last answer."""
        links = list(self.links.values())
        for kind, name, help_text, read in (
            ("gauge", "chatplane_peer_reachable", "1 when the peer's last Hello answered",
             lambda k: int(k.reachable)),
            ("gauge", "chatplane_peer_ok",
             "1 when the peer answered as the expected region, protocol and token key",
             lambda k: int(k.ok)),
            ("gauge", "chatplane_peer_rtt_seconds", "round trip of the last answered Hello",
             lambda k: k.rtt_s if k.reachable and k.rtt_s is not None else math.nan),
            ("gauge", "chatplane_peer_last_ok_timestamp_seconds",
             "wall clock of the last answered Hello (0: never)", lambda k: k.last_ok or 0),
            ("counter", "chatplane_peer_probe_failures_total", "Hellos that failed",
             lambda k: k.failures),
        ):
            yield metrics.labelled(kind, name, help_text, "peer",
                                   {k.peer.name: read(k) for k in links})

    def routes(self) -> list[web.RouteDef]:
        async def peers(request: web.Request) -> web.Response:
            return web.json_response(self.report())

        return [web.get("/v1/peers", peers)]


def prober_for(settings: Settings, server_id: str, prove: hello.Prover,
               security: LinkSecurity) -> PeerProber:
    """The prober of the peers in `settings` (already validated by `settings.load`)."""
    me = Identity(settings.server.region, settings.server.cluster, server_id, prove)
    peers = peerlist.parse(settings.links.peers, settings.server.region)
    return PeerProber(me, peers, settings.links.peer_probe_s, settings.links.peer_timeout_s,
                      security)


def add_to_server(prober: PeerProber, server: grpc.aio.Server,
                  sequencing: Sequencing | None = None,
                  shared: SharedSequencing | None = None) -> None:
    rgrpc.add_RegionServicer_to_server(RegionServicer(prober.me, prober, sequencing, shared),
                                       server)
