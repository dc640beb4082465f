"""An inbox owner for tests/test_fan_out_cut.py, run as its own process
(`python -m tests.support.fanout_peer --port P --secret S --log FILE
[--cut-first]`): it serves `Im.FanOutManyStream` (and `Im.FanOutMany`)
behind the real caller gate, "applies" each conversation's fan-out by
appending it to FILE as a JSON line (conversation, entries, fresh seqs) and
answers it written. With `--cut-first` the stream that carried the first
batch ends UNAVAILABLE right after that batch was applied, before its answer
is written: what its caller sees when the connection breaks at that moment."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from chatplane.rpc import streams
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc
from tests.support.stream_peer import serve_for_a_test


class Owner(sgrpc.ImServicer):
    def __init__(self, log: Path, cut_first: bool) -> None:
        self.log = log
        self.cut = cut_first

    async def apply(self, request: spb.FanOutRequests) -> spb.FanOutReplies:
        with self.log.open("a") as out:
            for one in request.requests:
                out.write(json.dumps({
                    "conversation": one.conversation_id,
                    "entries": [[e.seq, list(e.user_ids)] for e in one.entries],
                    "fresh": [e.seq for e in one.entries if e.fresh]}) + "\n")
        return spb.FanOutReplies(replies=[
            spb.FanOutReply(written=sum(len(e.user_ids) for e in one.entries))
            for one in request.requests])

    async def FanOutMany(self, request: spb.FanOutRequests,
                         context: grpc.aio.ServicerContext) -> spb.FanOutReplies:
        return await streams.answer_unary(context, self.apply, request)

    async def FanOutManyStream(self, requests: AsyncIterator[spb.FanOutRequests],
                               context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[spb.FanOutReplies]:
        async with streams.serving(requests, context, self.apply,
                                   spb.FanOutReplies) as answers:
            async for answer in answers:
                if self.cut:  # applied, and the answer is lost with the stream
                    self.cut = False
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "cut after applying")
                yield answer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--cut-first", action="store_true")
    args = parser.parse_args()
    owner = Owner(args.log, args.cut_first)
    await serve_for_a_test(args.port, lambda s: sgrpc.add_ImServicer_to_server(owner, s),
                           LinkSecurity("im", secret=args.secret))


if __name__ == "__main__":
    asyncio.run(main())
