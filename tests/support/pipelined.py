"""A lean raw-TCP device that pipelines sends: the client the cid-order
must-hold is about (one connection, increasing cids, up to the window in
flight, no SDK between the test and the wire)."""

from __future__ import annotations

import asyncio

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.protocol import frames
from chatplane.v1 import frames_pb2 as pb


class PipelinedDevice:
    """Logs in on a gateway's TCP port, acks every push, and answers each
    request frame's future by id."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[pb.Frame]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> pb.LoginAck:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.get_running_loop().create_task(self._read())
        reply = await self.request(pb.Frame(login=pb.Login(protocol_version=1, token=self.token)))
        assert reply.WhichOneof("body") == "login_ack", reply
        return reply.login_ack

    async def _read(self) -> None:
        assert self._reader is not None and self._writer is not None
        parser = frames.FrameReader()
        while data := await self._reader.read(65536):
            for payload in parser.feed_data(data):
                frame = frames.decode(payload)
                if frame.WhichOneof("body") == "push" and frame.push.entries:
                    ack = pb.Frame(push_ack=pb.PushAck(inbox_seq=max(
                        e.inbox_seq for e in frame.push.entries)))
                    self._writer.write(frames.encode_prefixed(ack))
                elif frame.id in self._waiting:
                    self._waiting.pop(frame.id).set_result(frame)

    def submit(self, frame: pb.Frame) -> asyncio.Future[pb.Frame]:
        """Write a request frame now; its reply comes through the future."""
        assert self._writer is not None
        self._next_id += 1
        frame.id = self._next_id
        future: asyncio.Future[pb.Frame] = asyncio.get_running_loop().create_future()
        self._waiting[frame.id] = future
        self._writer.write(frames.encode_prefixed(frame))
        return future

    async def request(self, frame: pb.Frame, timeout_s: float = 15.0) -> pb.Frame:
        return await asyncio.wait_for(self.submit(frame), timeout_s)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()


async def pipeline_into_fresh_conversations(port: int, signer: TokenSigner,
                                            checker: DeliveryChecker, *, senders: int,
                                            rounds: int, window: int) -> None:
    """`senders` devices on one gateway's TCP port; each, `rounds` times,
    opens a new 1:1 conversation and at once writes `window` sends into it
    (increasing cids) before reading any reply. Acks go to the checker with
    their cids."""
    devices = [PipelinedDevice("127.0.0.1", port, signer.mint(f"s{i}", "phone"))
               for i in range(senders)]
    for device in devices:
        await device.connect()

    async def run(i: int, device: PipelinedDevice) -> None:
        cid = 1000
        for r in range(rounds):  # a fresh conversation each round: cold caches at its owner
            opened = await device.request(pb.Frame(open_direct=pb.OpenDirect(
                peer_user_id=f"p{i}x{r}")))
            conversation = opened.open_direct_ack.conversation_id
            checker.add_member(conversation, f"s{i}")
            futures = []
            for n in range(window):
                cid += 1
                futures.append(device.submit(pb.Frame(send=pb.Send(
                    conversation_id=conversation, cid=cid, text=f"{r}-{n}"))))
            for reply in await asyncio.wait_for(asyncio.gather(*futures), 30):
                assert reply.WhichOneof("body") == "send_ack", reply
                ack = reply.send_ack
                checker.record_ack(f"s{i}", "phone", conversation, ack.seq, ack.message_id,
                                   cid=ack.cid)

    try:
        await asyncio.gather(*(run(i, d) for i, d in enumerate(devices)))
    finally:
        for device in devices:
            await device.close()
