"""The pieces under the cluster, each against the real thing: instance
registry on a real Redis (device routes: tests/routes/), the hash ring, the SQLite
shared-mode fence that keeps seqs unique with two writers, and trace
context across a real gRPC hop."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from chatplane import tracing
from chatplane.im.app import ImServicer
from chatplane.im.service import ImService
from chatplane.protocol.errors import ErrorCode
from chatplane.registry.instances import Instances
from chatplane.registry.ring import HashRing
from chatplane.routes.memory import MemoryRoutes
from chatplane.rpc import serving
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.settings import Limits
from chatplane.state.service import StateService
from chatplane.storage.base import SendRequest
from chatplane.storage.sqlite import SqliteStorage
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.cluster.conftest import ClusterFactory


@pytest.mark.redis
async def test_instances_expire_and_report_a_lost_key(client: aioredis.Redis) -> None:
    instances = Instances(client, ttl_s=0.3)
    assert await instances.publish("gateway", "gw-1", {"ws": "ws://a/ws"}) is False  # new
    assert await instances.publish("gateway", "gw-1", {"ws": "ws://a/ws"}) is True
    await instances.publish("gateway", "gw-2", {"ws": "ws://b/ws"})
    assert set(await instances.live("gateway")) == {"gw-1", "gw-2"}
    await asyncio.sleep(0.4)
    await instances.publish("gateway", "gw-2", {"ws": "ws://b/ws"})
    assert set(await instances.live("gateway")) == {"gw-2"}  # gw-1 stopped refreshing
    await client.flushall()  # Redis restarted empty
    assert await instances.publish("gateway", "gw-2", {"ws": "ws://b/ws"}) is False


def test_ring_moves_only_the_keys_of_the_member_that_changed() -> None:
    keys = [f"d:u{i}:v{i}" for i in range(3000)]
    ring = HashRing(["im-1", "im-2", "im-3"])
    before = {k: ring.owner(k) for k in keys}
    assert set(before.values()) == {"im-1", "im-2", "im-3"}
    ring.update(["im-1", "im-3"])  # im-2 died
    after = {k: ring.owner(k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "im-2" for k in moved)
    assert len(moved) == sum(1 for v in before.values() if v == "im-2")
    # the next owner on the ring is who takes over
    ring3 = HashRing(["im-1", "im-2", "im-3"])
    assert all(ring3.owners(k)[1] == after[k] for k in moved)


async def test_sqlite_shared_mode_keeps_seqs_exact_even_unfenced(tmp_path: Path) -> None:
    """Two writers (as two im processes) append to one conversation at once,
    with no lease (the im tier fences its appends; see test_leases.py): the
    write lock and the heads re-read under it still keep seqs 1..n exact."""
    path = tmp_path / "chatplane.db"
    one, two = SqliteStorage(path, shared=True), SqliteStorage(path, shared=True)
    await one.open()
    await two.open()
    conv = (await one.ensure_direct("a", "b", 1)).conversation_id

    async def send(storage: SqliteStorage, device: str, n: int) -> list[int]:
        seqs = []
        for cid in range(1, n + 1):
            result = await storage.append(SendRequest(
                conversation_id=conv, sender="a", sender_device=device, cid=cid, text="x",
                message_id=f"{device}-{cid}", sent_at_ms=1), ["a", "b"])
            seqs.append(result.message.seq)
        return seqs

    got = await asyncio.gather(*(send(s, f"d{i}", 60) for i, s in enumerate([one, two, one, two])))
    everything = sorted(s for seqs in got for s in seqs)
    assert everything == list(range(1, 241))
    inbox = await two.inbox("b", 0, 500)
    assert [i.inbox_seq for i in inbox] == list(range(1, 241))
    assert [i.message.seq for i in inbox] == list(range(1, 241))  # inbox order = seq order
    await one.close()
    await two.close()


async def test_trace_context_crosses_the_grpc_hop(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.setup("test", exporter=exporter)
    storage = SqliteStorage(tmp_path / "t.db")
    await storage.open()
    servicer = ImServicer(ImService(storage, StateService(MemoryRoutes(), "gw"), Limits()))
    server, port = await serving.start_grpc(
        "127.0.0.1", 0, lambda s: sgrpc.add_ImServicer_to_server(servicer, s),
        LinkSecurity("im", secret="s"))
    try:
        async with LinkSecurity("gateway", secret="s").open_channel(
                f"127.0.0.1:{port}", "im", []) as channel:
            with tracing.span("gateway.request"):
                client_trace = tracing.current_trace_id()
                frame = pb.Frame(id=7, open_direct=pb.OpenDirect(peer_user_id="bob"))
                reply = await sgrpc.ImStub(channel).Handle(
                    spb.ClientRequest(user_id="alice", device_id="p",
                                      frame=frame.SerializeToString()),
                    timeout=5)
                line = tracing.JsonFormatter("gateway").format(
                    logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None))
        assert pb.Frame.FromString(reply.frame).open_direct_ack.conversation_id
        finished = exporter.get_finished_spans()
        spans = {s.name: s for s in finished}
        by_id = {s.context.span_id: s for s in finished}
        handler, request = spans["im.Handle"], spans["gateway.request"]
        assert format(handler.context.trace_id, "032x") == client_trace
        # im.Handle <- the gRPC server span <- the gRPC client span <- gateway.request
        chain = []
        span = handler
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            chain.append(span)
        assert [s.kind.name for s in chain] == ["SERVER", "CLIENT", "INTERNAL"]
        assert chain[-1] is request and chain[0].name == "/chatplane.v1.Im/Handle"
        assert json.loads(line)["trace_id"] == client_trace
    finally:
        await server.stop(None)
        await storage.close()
        tracing.stop()


async def test_coalescer_batches_concurrent_calls_and_shares_errors() -> None:
    from chatplane.rpc.batching import Coalescer

    batches: list[list[str]] = []
    fail = False

    async def heads(keys: Sequence[str]) -> dict[str, int]:
        batches.append(list(keys))
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("im down")
        return {k: len(k) for k in keys}

    coalescer: Coalescer[str, int] = Coalescer(heads, max_batch=50)
    got = await asyncio.gather(*(coalescer.get(f"u{i}") for i in range(120)))
    assert got == [len(f"u{i}") for i in range(120)]
    assert [len(b) for b in batches] == [50, 50, 20]  # 120 asked at once: 3 calls
    fail = True
    results = await asyncio.gather(*(coalescer.get("x") for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)


async def test_shared_calls_send_at_once_when_idle_and_together_when_busy() -> None:
    from chatplane.rpc.batching import SharedCalls

    calls: list[list[str]] = []
    release = asyncio.Event()
    fail = False

    async def call(address: str, requests: list[str]) -> list[str]:
        calls.append(list(requests))
        await release.wait()
        if fail:
            raise RuntimeError(f"{address} down")
        return [f"{address}:{r}" for r in requests]

    async def turns() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    shared: SharedCalls[str, str] = SharedCalls(call, len, in_flight=2, max_batch=3)
    first = asyncio.ensure_future(shared.ask("im-1", "a"))
    await turns()
    second = asyncio.ensure_future(shared.ask("im-1", "b"))
    await turns()
    assert calls == [["a"], ["b"]]  # fewer than 2 in flight: each goes at once, alone
    waiting = [asyncio.ensure_future(shared.ask("im-1", r)) for r in "cdef"]
    left = asyncio.ensure_future(shared.ask("im-1", "g"))
    other = asyncio.ensure_future(shared.ask("im-2", "z"))  # another address: its own calls
    await turns()
    left.cancel()  # its caller stopped waiting: it is never sent
    await turns()
    assert calls == [["a"], ["b"], ["z"]]
    release.set()
    assert await asyncio.gather(first, second, *waiting, other) == [
        "im-1:a", "im-1:b", "im-1:c", "im-1:d", "im-1:e", "im-1:f", "im-2:z"]
    # the ones that waited went together, at most 3 a call, in the order asked
    assert calls[3:] == [["c", "d", "e"], ["f"]]
    assert shared.calls == 5
    fail = True
    results = await asyncio.gather(*(shared.ask("im-1", r) for r in "xyz"),
                                   return_exceptions=True)
    assert [str(r) for r in results] == ["im-1 down"] * 3  # a call's error is each one's


async def _frame(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5) -> pb.Frame:
    message = await ws.receive(timeout=timeout_s)
    assert message.type == aiohttp.WSMsgType.BINARY, message
    return pb.Frame.FromString(message.data)


@pytest.mark.redis
@pytest.mark.slow
async def test_a_late_login_on_an_older_connection_is_kicked_in_a_cluster(
        make_cluster: ClusterFactory) -> None:
    """Real processes: a device opens a connection on gw-1, then a newer one on
    gw-2 that logs in; the older connection's login arrives last. The newer
    connection keeps the device (its route, and it is not kicked)."""
    cluster = make_cluster(gateways=2, ims=1, states=1)
    r = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    ws_of = {g: str(await r.hget(f"cp:gateway:{g}", "ws")) for g in ("gw-1", "gw-2")}
    token = cluster.signer.mint("late", "phone")
    login = pb.Frame(id=1, login=pb.Login(protocol_version=1, token=token)).SerializeToString()
    async with aiohttp.ClientSession() as http:
        older = await http.ws_connect(ws_of["gw-1"])
        await asyncio.sleep(0.05)  # opened earlier than the next one, for sure
        newer = await http.ws_connect(ws_of["gw-2"])
        await newer.send_bytes(login)
        assert (await _frame(newer)).WhichOneof("body") == "login_ack"
        await older.send_bytes(login)
        refused = await _frame(older)
        assert refused.WhichOneof("body") == "error"
        assert refused.error.code == ErrorCode.SESSION_REPLACED
        assert str(await r.hget("cp:route:late", "phone")).startswith("gw-2|")
        beat = pb.Frame(id=2, heartbeat=pb.Heartbeat(client_time_ms=1)).SerializeToString()
        await newer.send_bytes(beat)
        assert (await _frame(newer)).WhichOneof("body") == "heartbeat_ack"  # still connected
        await older.close()
        await newer.close()
    await r.aclose()
