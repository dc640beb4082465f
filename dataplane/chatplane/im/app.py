"""`chatplane im`: the im tier as its own process.

A gRPC server with the client-request API (`Im.Handle`: a request frame in,
the reply frame out — the gateway forwards bytes) and `Im.InboxHeads` (the
gateways' head check), the cross-region link `Region` for peer regions
(`chatplane.regions`), the admin API, probes and `GET /v1/peers` on HTTP, a
`DeliveryOutbox` towards state, and its entry in the Redis registry
(`cp:im:<id>`), from which gateways build the hash ring that says which
instance owns which conversation.

With peers and the embedded store (every im of the region on one SQLite file,
`CHATPLANE_SQLITE_SHARED=1`), every im serves the whole link, as `chatplane up`
does (im/regionwiring.py): homes, forwarding, the replicated log. A send another
region forwards here goes to its conversation's owner on the ring; the jobs that
must run once per region (the pullers of the peers' logs) run on one im
(im/regionjobs.py); what they apply reaches devices through state like any
message. On a CQL keyspace the regions share (two datacenters), every im serves the
link the same way (im/sharedwiring.py): homes from the shared row, forwarding to the
owner, and the notices of what it sequences, kept in the region's Redis
(im/sharednotices.py) so any im answers a peer's `Notify`; one im follows each peer's
notices (im/regionjobs.py). Without either store, the link only answers `Hello`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from chatplane import metrics, revocations, tracing
from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner, read_or_create_secret
from chatplane.im import regionwiring, requests, sharedwiring
from chatplane.im.admin import AdminApi
from chatplane.im.confirmations import SharedConfirmations
from chatplane.im.forward import ImRing
from chatplane.im.inboxes import Inboxes
from chatplane.im.invalidation import Invalidations
from chatplane.im.leases import NotOwner
from chatplane.im.regionjobs import RegionJobs
from chatplane.im.service import ImService
from chatplane.im.sharednotices import RedisCursors, RedisNotices
from chatplane.protocol import bounds
from chatplane.protocol.errors import ErrorCode, ProtocolError
from chatplane.protocol.wire import error_frame
from chatplane.regions import links as region_links
from chatplane.regions.homes import FORWARD_TIMEOUT_S
from chatplane.registry import instances as registry
from chatplane.rpc import serving, streams
from chatplane.rpc.adminport import AuditLog, start_admin
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers, parse_addrs
from chatplane.rpc.serving import refuse_out_of_bounds
from chatplane.settings import Settings
from chatplane.state.client import DeliveryOutbox, StateLinks
from chatplane.storage import archiving
from chatplane.storage.base import (
    AppendResult,
    Revocation,
    SendRequest,
    StorageError,
    StoredMessage,
    events_conversation_id,
)
from chatplane.storage.factory import make_storage
from chatplane.supervision import Supervisor
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc

log = logging.getLogger("chatplane.im")

# regions linked: how often a peer's `Region.Replicate` stream served here looks for
# entries the region's other ims committed to the shared store
LOG_POLL_S = 0.05
# a send forwarded here by another region, at its owner: within the forwarding region's
# own deadline (regions/homes.py), past a sync ack's wait for a confirmation
OWNER_TIMEOUT_S = FORWARD_TIMEOUT_S / 2


class ImServicer(sgrpc.ImServicer):
    def __init__(self, im: ImService) -> None:
        self.im = im

    async def Handle(self, request: spb.ClientRequest,
                     context: grpc.aio.ServicerContext) -> spb.ClientReply:
        with tracing.serving("im.Handle"):
            frame = requests.admit(request, self.im.bounds)
            if frame.WhichOneof("body") == "error":
                return spb.ClientReply(frame=frame.SerializeToString())
            try:
                reply = await self.im.handle(request.user_id, request.device_id, frame)
            except NotOwner as exc:  # the gateway tries the next instance: the new owner
                await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
                raise
            return spb.ClientReply(frame=reply.SerializeToString())

    async def HandleSends(self, request: spb.ClientRequests,
                          context: grpc.aio.ServicerContext) -> spb.ClientReplies:
        """A gateway's batch of one device's sends, in cid order: handled in
        that order (a resend of the whole batch, after a failover, is
        answered with the original acks of what was already stored)."""
        with tracing.serving("im.HandleSends"):
            await refuse_out_of_bounds(context, "handle_sends", request)
            frames = [requests.admit(spb.ClientRequest(user_id=request.user_id,
                                                       device_id=request.device_id, frame=f),
                                     self.im.bounds) for f in request.frames]
            try:
                replies = await self.im.handle_sends(request.user_id, request.device_id, frames)
            except NotOwner as exc:  # the gateway sends the batch to the next instance
                await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
                raise
            return spb.ClientReplies(frames=[r.SerializeToString() for r in replies])

    async def HandleSendLanes(self, request: spb.SendLanes,
                              context: grpc.aio.ServicerContext) -> spb.SendLanesReply:
        """The lanes a gateway queued for this instance meanwhile (one call
        instead of one per lane), each handled as by HandleSends, side by
        side: order is owed within a lane only."""
        return await streams.answer_unary(context, self._send_lanes, request)

    async def HandleSendLanesStream(self, requests: AsyncIterator[spb.SendLanes],
                                    context: grpc.aio.ServicerContext) -> AsyncIterator[spb.SendLanesReply]:
        """HandleSendLanes' batches on one stream per gateway (rpc/streams.py)."""
        async with streams.serving(requests, context, self._send_lanes, spb.SendLanesReply) as answers:
            async for answer in answers:
                yield answer

    async def _send_lanes(self, request: spb.SendLanes) -> spb.SendLanesReply:
        with tracing.serving("im.HandleSendLanes"):
            _refuse_out_of_bounds("handle_send_lanes", request)
            lanes = await asyncio.gather(*(self._lane(lane) for lane in request.lanes))
            return spb.SendLanesReply(lanes=lanes)

    async def _lane(self, lane: spb.ClientRequests) -> spb.ClientReplies:
        """One lane's replies; `not_handled` when this instance does not own
        its conversation (the gateway sends it again to the next owner, as
        after HandleSends' UNAVAILABLE). A lane that fails here (a bug) is
        answered INTERNAL, as HandleSends' gateway would answer it; the
        other lanes of the call are not."""
        frames = [requests.admit(spb.ClientRequest(user_id=lane.user_id,
                                                   device_id=lane.device_id, frame=f),
                                 self.im.bounds) for f in lane.frames]
        try:
            replies = await self.im.handle_sends(lane.user_id, lane.device_id, frames)
        except NotOwner as exc:
            return spb.ClientReplies(not_handled=exc.message)
        except Exception as exc:
            log.exception("a lane of sends failed")
            replies = [error_frame(f.id, ErrorCode.INTERNAL,
                                   f"internal error: {type(exc).__name__}") for f in frames]
        return spb.ClientReplies(frames=[r.SerializeToString() for r in replies])

    async def InboxHeads(self, request: spb.InboxHeadsRequest,
                         context: grpc.aio.ServicerContext) -> spb.InboxHeadsReply:
        with tracing.serving("im.InboxHeads"):
            await refuse_out_of_bounds(context, "inbox_heads", request)
            users = list(dict.fromkeys(request.user_ids))
            try:
                # (regions linked: a login places its user's home here if it has none)
                heads = await asyncio.gather(*(self.im.inbox_head(u) for u in users))
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
                raise
            return spb.InboxHeadsReply(heads=dict(zip(users, heads, strict=True)),
                                       store_id=self.im.reads.store_id)

    async def GroupHeads(self, request: spb.GroupHeadsRequest,
                         context: grpc.aio.ServicerContext) -> spb.GroupHeadsReply:
        with tracing.serving("im.GroupHeads"):
            await refuse_out_of_bounds(context, "group_heads", request)
            try:
                heads = await self.im.reads.group_heads(list(request.conversation_ids))
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
                raise
            return spb.GroupHeadsReply(heads=heads)

    async def AppendEvent(self, request: spb.AppendEventRequest,
                          context: grpc.aio.ServicerContext) -> spb.AppendEventReply:
        """An event another instance made for a user whose event conversation
        this one owns (im/forward.py); appended here whatever this instance's
        ring says, so a forward never bounces."""
        with tracing.serving("im.AppendEvent"):
            out_of_bounds = bounds.call_problem("append_event", request)
            if out_of_bounds is not None or not request.content_type.startswith("event/"):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    out_of_bounds or "not an event")
            event = SendRequest(
                conversation_id=events_conversation_id(request.user_id), sender=request.user_id,
                sender_device=request.device, cid=request.cid, text="",
                message_id=request.message_id, sent_at_ms=request.sent_at_ms,
                payload=request.payload, content_type=request.content_type)
            try:
                result = await self.im.sequencer.append_event(event)
            except ProtocolError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, exc.message)
                raise
            return spb.AppendEventReply(seq=result.message.seq, duplicate=result.duplicate)


    async def FanOut(self, request: spb.FanOutRequest,
                     context: grpc.aio.ServicerContext) -> spb.FanOutReply:
        """Inbox entries of another instance's messages for users whose
        inboxes this one writes (im/inboxes.py); written whatever this
        instance's ring says, so a fan-out never bounces."""
        with tracing.serving("im.FanOut"):
            await refuse_out_of_bounds(context, "fan_out", request)
            inboxes = await self._inboxes(context)
            reply = await self._fan_out(inboxes, request)
            if reply.failed:  # not UNAVAILABLE: the caller must not write around
                await context.abort(grpc.StatusCode.ABORTED, reply.failed)
            return reply

    async def FanOutMany(self, request: spb.FanOutRequests,
                         context: grpc.aio.ServicerContext) -> spb.FanOutReplies:
        """Several conversations' fan-outs (im/forward.py gathers what it has
        for this instance meanwhile), each as by FanOut, side by side."""
        return await streams.answer_unary(context, self._fan_out_many, request)

    async def FanOutManyStream(self, requests: AsyncIterator[spb.FanOutRequests],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[spb.FanOutReplies]:
        """FanOutMany's batches on one stream per im instance (rpc/streams.py)."""
        async with streams.serving(requests, context, self._fan_out_many, spb.FanOutReplies) as answers:
            async for answer in answers:
                yield answer

    async def _fan_out_many(self, request: spb.FanOutRequests) -> spb.FanOutReplies:
        with tracing.serving("im.FanOutMany"):
            _refuse_out_of_bounds("fan_out_many", request)
            inboxes = self.im.sequencer.inboxes
            if inboxes is None:
                raise streams.BatchFailed(grpc.StatusCode.FAILED_PRECONDITION, "not in a cluster")
            replies = await asyncio.gather(*(self._fan_out(inboxes, r) for r in request.requests))
            return spb.FanOutReplies(replies=replies)

    async def _inboxes(self, context: grpc.aio.ServicerContext) -> Inboxes:
        inboxes = self.im.sequencer.inboxes
        if inboxes is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not in a cluster")
            raise AssertionError("abort raises")
        return inboxes

    @staticmethod
    async def _fan_out(inboxes: Inboxes, request: spb.FanOutRequest) -> spb.FanOutReply:
        """One conversation's entries written (or found) here; `failed`: storage refused."""
        # Finished even when the caller stops waiting: its retry then finds
        # the entries instead of starting over (and being cut short again).
        work = asyncio.ensure_future(inboxes.fan_out_here(request.conversation_id, [
            (entry.seq, list(entry.user_ids)) for entry in request.entries],
            {entry.seq for entry in request.entries if entry.fresh}))
        work.add_done_callback(_outcome_seen)
        try:
            return spb.FanOutReply(written=await asyncio.shield(work))
        except StorageError as exc:
            return spb.FanOutReply(failed=str(exc) or type(exc).__name__)


def _refuse_out_of_bounds(call: str, request: object) -> None:
    """A batch whose fields are out of bounds fails INVALID_ARGUMENT (as
    rpc/serving.py's refuse_out_of_bounds ends a unary call)."""
    problem = bounds.call_problem(call, request)
    if problem is not None:
        raise streams.BatchFailed(grpc.StatusCode.INVALID_ARGUMENT, problem)


def _outcome_seen(done: asyncio.Future[int]) -> None:
    """A fan-out whose caller left: its failure is the caller's retry's to meet."""
    if not done.cancelled():
        done.exception()


class ImApp:
    kind = "im"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        links = settings.links
        server = settings.server
        if not settings.storage.redis_url:
            raise ValueError("the im tier needs CHATPLANE_REDIS_URL")
        data_dir = Path(settings.storage.data_dir)
        self.signer = TokenSigner.configured(settings)
        self.audit = AuditLog.configured(settings)
        self.admin_secret = server.admin_secret or read_or_create_secret(data_dir / ADMIN_SECRET_FILE)
        self.instance_id = server.server_id or f"im-{socket.gethostname()}"
        self.redis = registry.connect(settings.storage.redis_url, timeout_s=links.rpc_deadline_s / 2,
                                      tls=settings.tls)
        self.instances = registry.Instances(self.redis, links.registry_ttl_s)
        self.security = LinkSecurity.from_settings(settings, "im")
        self.peers = Peers(links.rpc_deadline_s, self.security)
        self.outbox = DeliveryOutbox(StateLinks(
            self.peers, parse_addrs(links.state_addrs),
            registry.CachedInstances(self.instances, "state", 1.0)))
        self.storage = make_storage(settings)
        # the same ring the gateways route by (the live im instances in Redis)
        self.ring = ImRing(self.instance_id, self.peers,
                           registry.CachedInstances(self.instances, "im", 1.0))
        # its own client: the reader's blocking reads last a third of the bound
        self.invalidation_redis = registry.connect(
            settings.storage.redis_url, timeout_s=max(links.rpc_deadline_s / 2,
                                                      links.cache_bound_s / 3 + 1.0),
            tls=settings.tls)
        self.invalidations = Invalidations(self.invalidation_redis,
                                           bound_s=links.cache_bound_s)
        self.im = ImService(self.storage, self.outbox, settings.limits,
                            social=settings.social, server_id=self.instance_id, fenced=True,
                            owners=self.ring,
                            abuse=settings.abuse, versions=self.invalidations)
        self.servicer = ImServicer(self.im)
        self.prober = region_links.prober_for(settings, self.instance_id, self.signer.peer_proof,
                                              self.security)
        self.sequencing: region_links.Sequencing | None = None
        self.region_jobs: RegionJobs | None = None
        self._jobs_task: asyncio.Task[None] | None = None
        self.confirmations: SharedConfirmations | None = None
        self.shared: region_links.SharedSequencing | None = None
        if self.prober.links and regionwiring.linkable(self.storage):
            self._link_regions()
        elif self.prober.links and sharedwiring.shared(self.storage):
            self._link_shared()
        # storage -> Redis `cp:revocations`, which the gateways poll (revocations.py)
        self.revocation_mirror = revocations.RevocationWatcher(
            revocations.RevocationList(), self.storage.revocations,
            settings.tokens.session_check_s / 2, lambda new: None,
            also=lambda rows: revocations.write_redis(self.redis, rows))
        self.grpc_address = ""
        self.base_url = ""
        self.admin_url = ""
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self.publisher: serving.Publisher | None = None
        self.supervisor = Supervisor(settings.supervision)

    def _link_regions(self) -> None:
        """The region link over the shared store (docs/cluster.md, "Regions")."""
        if self.settings.links.failover_witness:
            raise ValueError("failover between clusters is not built yet: leave"
                             " CHATPLANE_FAILOVER_WITNESS empty (docs/cluster.md, \"Regions\")")
        sequencing = self.sequencing = regionwiring.link(
            self.settings, self.storage, self.im, self.prober, self.instance_id, None,
            via=self._at_owner, poll_s=LOG_POLL_S)
        self.region_jobs = RegionJobs(
            self.settings.server.region, self.ring, self.storage,
            lambda: sequencing.replication.start(self.supervisor), sequencing.replication.stop)
        durability = sequencing.homes.durability
        if durability is not None and durability.waits:  # sync: what one im hears, all do
            self.confirmations = SharedConfirmations(self.redis, self.settings.server.region,
                                                     durability)
        log_report = self.prober.extra_region
        jobs = self.region_jobs
        self.prober.extra_region = lambda: {**log_report(), **jobs.report()}

    def _link_shared(self) -> None:
        """The region link over a keyspace the regions share (docs/cluster.md, "Regions
        on CQL"): the notices in the region's Redis, one im following the peers'."""
        if self.settings.links.failover_witness:
            raise ValueError("failover between clusters is not built yet: leave"
                             " CHATPLANE_FAILOVER_WITNESS empty (docs/cluster.md, \"Regions\")")
        region = self.settings.server.region
        shared = self.shared = sharedwiring.link(
            self.settings, self.storage, self.im, self.prober,
            RedisNotices(self.redis, region), fan_out=sharedwiring.owners_fan_out(self.im),
            cursors=RedisCursors(self.redis, region), via=self._at_owner)
        jobs = self.region_jobs = RegionJobs(region, self.ring, self.storage,
                                             lambda: shared.follower.start(self.supervisor),
                                             shared.follower.stop)
        self.prober.extra_region = jobs.report
        # /v1/peers' `replication` (what the operator's ReplicationReady judges): the
        # following im's view only; the others' idle followers would read as stalled
        self.prober.extra = lambda: shared.follower.report() if jobs.running else {}

    def _at_owner(self, local: regionwiring.HomeSend) -> regionwiring.HomeSend:
        """A send another region forwarded here: to its conversation's owner on the
        ring (im/forward.py, `send_at_owner`); here when this im owns it (or no owner
        before it answers)."""
        async def send(request: SendRequest) -> AppendResult:
            if request.conversation_id.startswith("u:"):  # an event: appended here
                return await local(request)
            reply = await self.ring.send_at_owner(request, OWNER_TIMEOUT_S)
            if reply is None:
                return await local(request)
            kind = reply.WhichOneof("body")
            if kind == "error":
                raise ProtocolError(ErrorCode(reply.error.code), reply.error.message)
            if kind != "send_ack":
                raise ProtocolError(ErrorCode.INTERNAL, f"the owner answered {kind}")
            ack = reply.send_ack
            return AppendResult(message=StoredMessage(
                conversation_id=ack.conversation_id, seq=ack.seq, message_id=ack.message_id,
                sender=request.sender, sender_device=request.sender_device, cid=ack.cid,
                text=request.text, sent_at_ms=ack.sent_at_ms, payload=request.payload,
                content_type=request.content_type or "text"), duplicate=ack.duplicate)

        return send

    def _ready(self) -> bool:
        return self.publisher is not None and self.publisher.healthy and self.supervisor.ready()

    def _details(self) -> dict[str, object]:
        return {**self.prober.summary(), **self.supervisor.details()}

    def _families(self) -> Iterator[Metric]:
        """What only a cluster im counts: its outbox to state and its ring of owners."""
        for name, help_text, value in (
            ("chatplane_im_delivered_total", "inbox entries handed to state", self.outbox.sent),
            ("chatplane_im_deliver_retries_total", "Deliver calls retried", self.outbox.retried),
            ("chatplane_im_deliver_given_up_total", "entries left to sync", self.outbox.given_up),
            ("chatplane_im_events_forwarded_total",
             "events appended by their conversation's owner at this instance's request",
             self.ring.forwarded),
            ("chatplane_im_events_kept_total",
             "events for a conversation owned elsewhere appended here (its owner did not answer)",
             self.ring.kept),
            ("chatplane_im_fan_outs_forwarded_total",
             "inbox fan-outs (one conversation's batch) written by the inboxes' owner at this "
             "instance's request", self.ring.fan_outs_forwarded),
            ("chatplane_im_fan_out_calls_total",
             "Im.FanOutMany calls made (each carries the fan-outs queued for one owner meanwhile)",
             self.ring.fan_out_calls),
            ("chatplane_im_fan_outs_kept_total",
             "inbox fan-outs written here: their inboxes' owner did not answer",
             self.ring.fan_outs_kept),
            ("chatplane_im_fan_outs_asked_again_total",
             "inbox fan-outs asked again of their owner after UNAVAILABLE (they may have run)",
             self.ring.fan_outs_asked_again),
            ("chatplane_im_region_sends_to_owner_total",
             "sends forwarded here by other regions and handed to their conversation's owner",
             self.ring.sends_forwarded),
            ("chatplane_im_group_delivered_total", "large-group messages handed to state",
             self.outbox.groups.sent),
            ("chatplane_im_group_given_up_total", "large-group messages left to the head check",
             self.outbox.groups.given_up),
        ):
            yield metrics.counter(name, help_text, value)
        yield from self.ring.fan_out_streams.families("chatplane_im_fan_out")
        yield from self.outbox.links.delivers.families("chatplane_im_deliver")
        yield metrics.gauge("chatplane_im_outbox_depth", "entries waiting for state",
                            self.outbox.depth)
        yield metrics.gauge("chatplane_im_group_outbox_depth",
                            "large-group messages waiting for state", self.outbox.groups.depth)

    def metrics_registry(self) -> CollectorRegistry:
        """What /metrics shows (once the storage is open, in start())."""
        linked = self.sequencing
        return metrics.registry(self._families, self.im.families, self.storage.families,
                                self.prober.families, self.supervisor.families,
                                *([linked.replication.families, linked.moves.families]
                                  if linked is not None else []),
                                *([self.shared.follower.families, self.shared.homes.families]
                                  if self.shared is not None else []))

    def _services(self, grpc_server: grpc.aio.Server) -> None:
        """The client-request API for the gateways and the cross-region link for peers."""
        sgrpc.add_ImServicer_to_server(self.servicer, grpc_server)
        region_links.add_to_server(self.prober, grpc_server, self.sequencing, self.shared)

    async def start(self) -> None:
        server, links = self.settings.server, self.settings.links
        host = serving.advertised_host(self.settings)
        await self.storage.open()
        self.supervisor.check("storage", self.storage.health)
        archiving.supervise(self.storage, self.supervisor)
        self.outbox.start(self.supervisor)
        self.supervisor.spawn("invalidations", self.invalidations.run)
        self._grpc, port = await serving.start_grpc(server.host, links.grpc_port, self._services,
                                                     self.security)
        self.grpc_address = f"{host}:{port}"
        self.prober.start(self.supervisor)
        await self.revocation_mirror.start(self.supervisor)
        app = web.Application(client_max_size=1024 * 1024)
        app.add_routes(serving.probe_routes(self._ready, self._details))
        self._runner, http_port = await serving.start_http(app, server.host, server.http_port)
        self.base_url = f"http://{host}:{http_port}"
        admin = web.Application(client_max_size=1024 * 1024)
        admin.add_routes([*serving.probe_routes(self._ready, self._details),
                          *serving.metrics_routes(self.metrics_registry()),
                          *self.prober.routes()])
        admin.add_routes(AdminApi(self.storage, self.signer, self.admin_secret, self.im.groups,
                                  audit=self.audit, on_revoked=self._revoked).routes())
        self._admin_runner, admin_port = await start_admin(admin, self.settings)
        self.admin_url = f"http://{host}:{admin_port}"
        self.publisher = serving.Publisher(
            self.instances, self.kind, self.instance_id,
            lambda: {"grpc": self.grpc_address, "http": self.base_url})
        await self.publisher.begin(self.supervisor)
        jobs, linked = self.region_jobs, self.sequencing
        if jobs is not None and linked is not None:  # regions linked (docs/cluster.md)
            self._jobs_task = self.supervisor.spawn("region-jobs", jobs.run)
            self.supervisor.spawn("region-cursors", functools.partial(
                jobs.follow_cursors, linked.replication.peers, linked.replication.log))
        if self.confirmations is not None:
            self.supervisor.spawn("region-confirmations", self.confirmations.run)
        if jobs is not None and self.shared is not None:  # one im follows the notices
            self._jobs_task = self.supervisor.spawn("region-jobs", jobs.run)

    async def _revoked(self, revocation: Revocation) -> None:
        """Tell the gateways now (they poll Redis), not at the next mirror round."""
        try:
            await revocations.write_redis(self.redis, [revocation])
        except (RedisError, OSError) as exc:  # stored: the mirror loop copies it later
            log.warning("revocation not copied to Redis yet: %s", exc)

    def ready_line(self) -> str:
        return (f"chatplane im ready id={self.instance_id} grpc={self.grpc_address}"
                f" http={self.base_url} admin={self.admin_url}")

    async def stop(self) -> None:
        if self.publisher is not None:
            await self.publisher.stop()  # leave the ring first: gateways move on
        await self.prober.stop()
        if self._jobs_task is not None:
            self._jobs_task.cancel()
            await asyncio.gather(self._jobs_task, return_exceptions=True)
        if self.region_jobs is not None:
            await self.region_jobs.stop()
        if self.sequencing is not None:
            await self.sequencing.homes.stop()
        if self.shared is not None:
            await self.shared.homes.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
        await self.outbox.stop()
        self.invalidations.stop()
        await self.revocation_mirror.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        self.audit.close()
        await self.ring.fan_out_streams.close()
        await self.peers.close()
        await self.supervisor.stop()
        await self.storage.close()
        await self.redis.aclose()
        await self.invalidation_redis.aclose()
