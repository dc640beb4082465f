"""A gateway-shaped gRPC peer for tests/test_streams.py, run as its own
process (`python -m tests.support.stream_peer --port P --secret S`), so a
test can kill it mid-stream. It serves `Gateway.Push` and, unless
`--no-stream` (a peer of an earlier version), `Gateway.PushStream`, behind
the real caller gate. A batch's first delivery's user says what to do:
`sleep:<s>` answers after s seconds, `fail:<CODE>` fails with that status,
`cancelled` answers how many batches were cancelled so far; anything else
answers at once. Every answer's `pushed` is the batch's number of deliveries
(for `cancelled`: the count)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from chatplane.rpc import serving, streams
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc


class Peer(sgrpc.GatewayServicer):
    def __init__(self) -> None:
        self.cancelled = 0

    async def handle(self, request: spb.PushRequest) -> spb.PushReply:
        what = request.deliveries[0].user_id if request.deliveries else ""
        kind, _, arg = what.partition(":")
        if kind == "sleep":
            try:
                await asyncio.sleep(float(arg))
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        elif kind == "fail":
            raise streams.BatchFailed(grpc.StatusCode[arg], f"failed as asked: {arg}")
        elif kind == "cancelled":
            return spb.PushReply(pushed=self.cancelled)
        return spb.PushReply(pushed=len(request.deliveries))

    async def Push(self, request: spb.PushRequest,
                   context: grpc.aio.ServicerContext) -> spb.PushReply:
        return await streams.answer_unary(context, self.handle, request)

    async def PushStream(self, requests: AsyncIterator[spb.PushRequest],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[spb.PushReply]:
        async with streams.serving(requests, context, self.handle, spb.PushReply) as answers:
            async for answer in answers:
                yield answer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--no-stream", action="store_true")
    args = parser.parse_args()
    peer = Peer()

    def register(server: grpc.aio.Server) -> None:
        if not args.no_stream:
            sgrpc.add_GatewayServicer_to_server(peer, server)
            return
        # what an earlier version's generated code registers: no PushStream at all
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "chatplane.v1.Gateway", {"Push": grpc.unary_unary_rpc_method_handler(
                peer.Push, request_deserializer=spb.PushRequest.FromString,
                response_serializer=spb.PushReply.SerializeToString)}),))

    await serve_for_a_test(args.port, register, LinkSecurity("gateway", secret=args.secret))


async def serve_for_a_test(port: int, register: Callable[[grpc.aio.Server], None],
                           security: LinkSecurity) -> None:
    """A test's gRPC peer: serve, say `ready port=P`, and stop by itself after 120 s (a
    test's peer never outlives it by much)."""
    server, port = await serving.start_grpc("127.0.0.1", port, register, security)
    print(f"ready port={port}", flush=True)
    try:
        await asyncio.sleep(120)
    finally:
        await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
