"""Traces of a real cluster reach an OTLP collector: a real gRPC server
speaking the OTLP trace service stands in for the collector, and a send's
spans from the gateway, im and state processes share one trace id."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from chatplane.client import Client
from tests.cluster.conftest import ClusterFactory

pytestmark = [pytest.mark.redis, pytest.mark.slow]


class Collector(otlp_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: dict[str, set[tuple[str, str]]] = defaultdict(set)  # trace -> (service, span)

    async def Export(self, request: otlp.ExportTraceServiceRequest,
                     context: grpc.aio.ServicerContext) -> otlp.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans[span.trace_id.hex()].add((service, span.name))
        return otlp.ExportTraceServiceResponse()


async def test_a_send_is_one_trace_across_the_tiers(make_cluster: ClusterFactory) -> None:
    collector = Collector()
    server = grpc.aio.server()
    otlp_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        cluster = make_cluster(gateways=1, ims=1, states=1, env={
            "CHATPLANE_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200"})
        signer = cluster.signer
        alice = Client(cluster.dispatch_url, signer.mint("alice", "p"))
        bob = Client(cluster.dispatch_url, signer.mint("bob", "p"))
        await alice.connect()
        await bob.connect()
        conv = await alice.direct("bob")
        await alice.send_text(conv, "traced")
        await asyncio.wait_for(anext(bob.messages()), 10)
        # the request: gateway -> im; the delivery: im outbox -> state -> gateway
        request = {("chatplane-gateway", "gateway.request"), ("chatplane-im", "im.Handle")}
        delivery = {("chatplane-im", "im.deliver"), ("chatplane-state", "state.Deliver"),
                    ("chatplane-gateway", "gateway.Push")}

        def traced(want: set[tuple[str, str]]) -> bool:
            return any(want <= spans for spans in collector.spans.values())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not (traced(request) and traced(delivery)) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        assert traced(request), dict(collector.spans)
        assert traced(delivery), dict(collector.spans)
        await alice.close()
        await bob.close()
    finally:
        await server.stop(None)
