"""Spans through the OpenTelemetry instrumentation (chatplane/tracing.py), caught by a
real in-process exporter: a traced request's storage and Redis calls are its children,
calls outside a request start no trace, and the sampler is parent-based."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

from chatplane import settings as settings_mod
from chatplane import tracing
from chatplane.client import Client
from chatplane.gateway.client import RemoteGateways
from chatplane.im.app import ImServicer
from chatplane.im.service import ImService
from chatplane.node import Node
from chatplane.registry.instances import CachedInstances, Instances
from chatplane.routes.memory import MemoryRoutes
from chatplane.routes.redis import RedisRoutes
from chatplane.rpc import serving
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.rpc.peers import Peers
from chatplane.settings import Limits
from chatplane.state.server import StateServicer
from chatplane.state.service import StateService
from chatplane.storage.sqlite import SqliteStorage
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.services import RedisService


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    assert tracing.setup("test", exporter=found)
    try:
        yield found
    finally:
        tracing.stop()


@pytest.fixture
async def redis_client(redis_server: RedisService) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    by_id = {s.context.span_id: s for s in spans}
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


@pytest.mark.redis
async def test_storage_and_redis_calls_of_a_traced_request_are_its_children(
        exporter: InMemorySpanExporter, redis_client: aioredis.Redis, tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "t.db")
    await storage.open()
    im = ImServicer(ImService(storage, StateService(MemoryRoutes(), "gw"), Limits()))
    peers = Peers(2.0, LinkSecurity("state", secret="s"))
    state = StateServicer(RedisRoutes(redis_client),
                          CachedInstances(Instances(redis_client, 3.0), "gateway", 1.0),
                          peers, RemoteGateways(peers).push)
    server, port = await serving.start_grpc(
        "127.0.0.1", 0, lambda s: (sgrpc.add_ImServicer_to_server(im, s),
                                   sgrpc.add_StateServicer_to_server(state, s)),
        LinkSecurity("im", secret="s"))
    try:
        async with LinkSecurity("gateway", secret="s").open_channel(
                f"127.0.0.1:{port}", "im", []) as channel:
            with tracing.span("gateway.request"):
                frame = pb.Frame(id=7, open_direct=pb.OpenDirect(peer_user_id="bob"))
                await sgrpc.ImStub(channel).Handle(spb.ClientRequest(
                    user_id="alice", device_id="p", frame=frame.SerializeToString()), timeout=5)
                await sgrpc.StateStub(channel).Register(spb.RegisterRequest(routes=[spb.Route(
                    user_id="alice", device_id="p", gateway_id="gw-1", conn_id="c1")]),
                    timeout=5)
    finally:
        await server.stop(None)
        await storage.close()
    spans = list(exporter.get_finished_spans())
    request = next(s for s in spans if s.name == "gateway.request")
    assert request.parent is None
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}  # one trace
    writes = [s for s in spans if s.attributes.get("db.system.name") == "sqlite"]
    assert writes and all(s.kind == SpanKind.CLIENT for s in writes)
    for write in writes:  # under the im handler, under the gRPC call, under the request
        assert ancestors(write, spans)[:1] == ["im.Handle"]
        assert ancestors(write, spans)[-1] == "gateway.request"
    commands = [s for s in spans if s.attributes.get("db.system") == "redis"
                or s.attributes.get("db.system.name") == "redis"]
    assert commands, [s.name for s in spans]
    redis_names = {c.name for c in commands}
    for command in commands:  # (a script's load runs under its failed EVALSHA)
        above = [name for name in ancestors(command, spans) if name not in redis_names]
        assert above[:1] == ["state.Register"] and above[-1] == "gateway.request"
        # the instrumentation keeps the command, never its values
        statement = str(command.attributes.get("db.statement")
                        or command.attributes.get("db.query.text") or "")
        assert "alice" not in statement and "gw-1" not in statement


@pytest.mark.redis
async def test_calls_outside_a_request_start_no_trace(
        exporter: InMemorySpanExporter, redis_client: aioredis.Redis, tmp_path: Path) -> None:
    await Instances(redis_client, 3.0).publish("gateway", "gw-1", {"ws": "ws://a/ws"})
    storage = SqliteStorage(tmp_path / "t.db")
    await storage.open()
    await storage.ensure_direct("ann", "bob", 1)
    await storage.close()
    with tracing.span("admin.request"):  # a request: its calls are traced
        await redis_client.ping()
    names = [s.name for s in exporter.get_finished_spans()]
    assert names[-1] == "admin.request" and len(names) == 2, names


def test_the_sampler_follows_the_caller_and_samples_a_share_of_requests() -> None:
    none = tracing.sampler(0.0)
    every = tracing.sampler(1.0)
    assert none.should_sample(None, 1, "gateway.request", SpanKind.INTERNAL).decision \
        == Decision.DROP
    assert every.should_sample(None, 1, "gateway.request", SpanKind.INTERNAL).decision \
        == Decision.RECORD_AND_SAMPLE
    # a client call with no caller (a heartbeat's Redis command) starts no trace
    assert every.should_sample(None, 1, "EVALSHA", SpanKind.CLIENT).decision == Decision.DROP
    traced = set_span_in_context(NonRecordingSpan(SpanContext(
        1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))))
    untraced = set_span_in_context(NonRecordingSpan(SpanContext(
        1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))))
    # parent-based: what the caller decided, whatever the ratio here
    assert none.should_sample(traced, 1, "im.Handle", SpanKind.SERVER).decision \
        == Decision.RECORD_AND_SAMPLE
    assert every.should_sample(untraced, 1, "im.Handle", SpanKind.SERVER).decision \
        == Decision.DROP
    half = tracing.sampler(0.5)
    sampled = sum(half.should_sample(None, trace_id, "r", SpanKind.INTERNAL).decision
                  == Decision.RECORD_AND_SAMPLE
                  for trace_id in range(1, 2**64, 2**64 // 1000))
    assert 400 < sampled < 600


def test_without_an_endpoint_nothing_is_set_up_and_spans_cost_nothing() -> None:
    assert not tracing.setup("test")
    assert not tracing.enabled()
    assert tracing.span("x") is tracing.span("y")  # one shared no-op
    assert tracing.db_span("sqlite", "write") is tracing.span("x")


async def test_json_log_lines_carry_the_span_ids(exporter: InMemorySpanExporter) -> None:
    formatter = tracing.JsonFormatter("gateway")
    record = logging.LogRecord("chatplane.gateway", logging.WARNING, __file__, 1, "hi %s",
                               ("there",), None)
    outside = json.loads(formatter.format(record))
    assert outside == {"ts": outside["ts"], "level": "WARNING", "service": "gateway",
                       "logger": "chatplane.gateway", "msg": "hi there"}
    with tracing.span("gateway.request"):
        inside = json.loads(formatter.format(record))
        await asyncio.sleep(0)
    (span,) = exporter.get_finished_spans()
    assert inside["trace_id"] == format(span.context.trace_id, "032x")
    assert inside["span_id"] == format(span.context.span_id, "016x")


async def test_up_traces_a_clients_sends_into_storage(exporter: InMemorySpanExporter,
                                                      tmp_path: Path) -> None:
    settings = settings_mod.load({"server": {"http_port": 0},
                                  "storage": {"data_dir": str(tmp_path)}}, environ={})
    node = Node(settings)
    await node.start()
    try:
        ann = Client(node.base_url, node.signer.mint("ann", "phone", 600))
        await ann.connect()
        conversation = await ann.direct("bob")
        await ann.send_text(conversation, "traced")
        await ann.close()
    finally:
        await node.stop()
    spans = list(exporter.get_finished_spans())
    sends = [s for s in spans if s.name == "gateway.sends"]
    assert sends and all(s.parent is None for s in sends)  # a request is a trace's root
    stored = [s for s in spans if s.attributes.get("db.system.name") == "sqlite"
              and "gateway.sends" in ancestors(s, spans)]
    assert stored, [s.name for s in spans]
    opened = [s for s in spans if s.name == "gateway.request"]
    assert {s.attributes.get("kind") for s in opened} >= {"open_direct"}
