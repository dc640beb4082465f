"""The gateway tier seen from state: `RemoteGateways`, its pushes.

State pushes each `Deliver` batch's entries to the gateways holding their
devices. A gRPC call costs far more CPU than the entries it carries
(docs/benchmarks.md, "`cluster up`: CPU per message per tier"), so pushes go
as batches on one long-lived stream per gateway (`Gateway.PushStream`,
rpc/streams.py), answered as a `Push` call would be; a gateway of an earlier
version (no stream method) gets `Push`. A retried push is harmless: each
connection's downlink window drops what it already pushed.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from chatplane.rpc.peers import Peers
from chatplane.rpc.streams import Streams
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc


class RemoteGateways:
    def __init__(self, peers: Peers) -> None:
        self.pushes: Streams[spb.PushRequest, spb.PushReply, sgrpc.GatewayStub] = Streams(
            peers, "gateway", "Gateway.Push", sgrpc.GatewayStub,
            lambda stub: stub.PushStream, lambda stub: stub.Push)

    async def push(self, address: str, request: spb.PushRequest,
                   timeout_s: float) -> spb.PushReply:
        """`request`'s entries to the gateway at `address` (its AioRpcError
        when it does not answer within `timeout_s`)."""
        return await self.pushes.call(address, request, timeout_s)

    def families(self) -> Iterator[Metric]:
        yield from self.pushes.families("chatplane_gateway_push")

    async def close(self) -> None:
        await self.pushes.close()
