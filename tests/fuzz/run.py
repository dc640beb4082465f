"""One fuzz run: a node, the ordinary pair, the attackers, and the judging.

`FuzzRun.step` sends a batch of drafted frames from several attackers at once
while the ordinary pair (alice and bob) each send one plain message in their
1:1 chat, waits for every reply, and judges each: the reply its kind expects
or a documented error code (never INTERNAL, never silence), INVALID_ARGUMENT
whenever an integer field was above 2^63-1, and nothing logged at ERROR by
the node. `settle` then checks the pair's chat with the delivery checker:
every acked message delivered once, in order, to both, and their history
contiguous. Shared by the CI property tests and `scripts/fuzz`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
from pathlib import Path

from chatplane.checker import DeliveryChecker
from chatplane.im import requests
from chatplane.node import Node
from chatplane.protocol.bounds import STORED_INT_MAX
from chatplane.protocol.errors import ErrorCode
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from tests.fuzz import frames, harness

ATTACKERS = ("mallory", "trudy", "eve")


class FuzzRun:
    def __init__(self, loop: asyncio.AbstractEventLoop, data_dir: Path) -> None:
        self.loop = loop
        self.data_dir = data_dir
        self.errors = harness.ErrorLog()
        self.checker = DeliveryChecker()
        self.known: list[str] = []
        self.attackers: dict[str, harness.Peer] = {}
        self.ordinary_sent = 0
        self.frames_sent = 0
        self.settled = 0

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        # what earlier tests in this worker left for the collector (aiohttp's "Unclosed
        # client session" is logged at ERROR when one is collected) is collected now,
        # before this run's own errors are watched
        gc.collect()
        logging.getLogger().addHandler(self.errors)
        self.loop.set_exception_handler(self.errors.loop_exception)
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        # large groups from 9 members (read diffusion too), groups of at most 64
        self.node: Node = await harness.start_node(
            self.data_dir,
            storage={"sqlite_synchronous": "NORMAL"},
            limits={"rate_limit_frames_per_s": 1e6, "rate_limit_burst": 1_000_000},
            social={"large_group_threshold": 8, "max_group_members": 64})
        self.alice = await self._peer("alice", "phone", self.checker)
        self.bob = await self._peer("bob", "laptop", self.checker)
        ack = await self.alice.request(pb.Frame(open_direct=pb.OpenDirect(peer_user_id="bob")))
        self.pair = ack.open_direct_ack.conversation_id
        for peer in (self.alice, self.bob):
            peer.watched.add(self.pair)
            self.checker.add_member(self.pair, peer.user)
            self.checker.add_device(peer.user, peer.device)
        self.known += [self.pair, "u:alice", "u:mallory"]

    async def _peer(self, user: str, device: str,
                    checker: DeliveryChecker | None = None) -> harness.Peer:
        peer = harness.Peer(self.node, user, device, checker)
        await peer.login(self.node.signer.mint(user, device))
        return peer

    def stop(self) -> None:
        path = getattr(self.node.storage, "path", None)
        self.loop.run_until_complete(self.node.stop())
        logging.getLogger().removeHandler(self.errors)
        if path is not None:  # the file itself, as SQLite sees it
            with contextlib.closing(sqlite3.connect(path)) as db:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # -- one step ---------------------------------------------------------------

    async def _attacker(self, name: str) -> harness.Peer:
        peer = self.attackers.get(name)
        if peer is None or peer.closed:  # closed by a fatal error: log in again
            peer = self.attackers[name] = await self._peer(name, "d")
        return peer

    def through_im(self, attacker: str, draft: frames.Draft) -> None:
        """A frame as another tier hands it to im (`Im.Handle`: admitted by
        `requests.admit`, then served), judged like one from a client."""
        self.loop.run_until_complete(asyncio.wait_for(self._through_im(attacker, draft),
                                                      harness.REPLY_TIMEOUT_S))

    async def _through_im(self, attacker: str, draft: frames.Draft) -> None:
        self.errors.records.clear()
        frame = draft.build(self.known)
        self.frames_sent += 1
        frame.id = self.frames_sent
        call = spb.ClientRequest(user_id=attacker, device_id="grpc", frame=frame.SerializeToString())
        reply = requests.admit(call, self.node.im.bounds)
        if reply.WhichOneof("body") != "error":
            reply = await self.node.im.handle(attacker, "grpc", reply)
        if draft.kind in ("push_ack", "heartbeat", "login"):  # the gateway's, not im's
            assert reply.error.code in (ErrorCode.UNKNOWN_FRAME, ErrorCode.INVALID_ARGUMENT), reply
        else:
            judge(draft, frame, reply)
        self._learn(reply)
        assert not self.errors.records, self.errors.first()

    def step(self, batch: list[tuple[str, frames.Draft]],
             login: tuple[dict[str, object], list[frames.Draft]] | None = None,
             ordinary: bool = True) -> None:
        self.loop.run_until_complete(asyncio.wait_for(self._step(batch, login, ordinary),
                                                      3 * harness.REPLY_TIMEOUT_S))

    async def _step(self, batch: list[tuple[str, frames.Draft]],
                    login: tuple[dict[str, object], list[frames.Draft]] | None,
                    ordinary: bool) -> None:
        self.errors.records.clear()  # each example judged on its own (shrinking replays)
        pending = []
        for name, draft in batch:
            peer = await self._attacker(name)
            frame = draft.build(self.known)
            pending.append((draft, frame, peer.start(frame)))
        self.frames_sent += len(batch)
        sends = []
        if ordinary:
            n = self.ordinary_sent
            sends = [self.alice.send_ordinary(self.pair, f"a{n}"),
                     self.bob.send_ordinary(self.pair, f"b{n}")]
            self.ordinary_sent += 1
        fresh = self._fresh_login(login) if login is not None else None
        replies = await asyncio.wait_for(asyncio.gather(*(w for _, _, w in pending)),
                                         harness.REPLY_TIMEOUT_S)
        await asyncio.gather(*sends)
        if fresh is not None:
            await fresh
        for (draft, frame, _), reply in zip(pending, replies, strict=True):
            judge(draft, frame, reply)
            self._learn(reply)
        assert not self.errors.records, self.errors.first()

    async def _fresh_login(self, login_case: tuple[dict[str, object], list[frames.Draft]]) -> None:
        """A new connection whose Login carries extreme values, with frames
        pipelined behind it: the login is accepted and the frames are served
        after it (judged like any), or it is refused with INVALID_ARGUMENT and
        closed, and the frames are dropped unanswered (docs/protocol.md)."""
        fields, pipelined = login_case
        peer = harness.Peer(self.node, "trudy", "fresh")
        login = pb.Login(protocol_version=1, token=self.node.signer.mint("trudy", "fresh"),
                         **fields)  # type: ignore[arg-type]
        accepted = peer.start(pb.Frame(login=login))
        held = [(draft, frame, peer.start(frame))
                for draft in pipelined for frame in [draft.build(self.known)]]
        reply = await asyncio.wait_for(accepted, harness.REPLY_TIMEOUT_S)
        if reply.WhichOneof("body") == "error":  # (or a pipelined frame was too large)
            assert reply.error.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.FRAME_TOO_LARGE), reply
            assert reply.error.code != ErrorCode.INVALID_ARGUMENT or reply.error.message.startswith(
                "field login."), reply
            await asyncio.sleep(0)
            assert peer.closed, "a refused login closes"
            return
        assert reply.WhichOneof("body") == "login_ack", reply
        assert login.inbox_seq <= STORED_INT_MAX and len(login.client_name) <= 256
        replies = await asyncio.wait_for(asyncio.gather(*(w for _, _, w in held)),
                                         harness.REPLY_TIMEOUT_S)
        for (draft, frame, _), answer in zip(held, replies, strict=True):
            judge(draft, frame, answer)
        peer.closed_by_server()  # as if the client went away

    def _learn(self, reply: pb.Frame) -> None:
        kind = reply.WhichOneof("body")
        found = ""
        if kind == "group_op_ack":
            found = reply.group_op_ack.conversation_id
        elif kind == "open_direct_ack":
            found = reply.open_direct_ack.conversation_id
        if found and found not in self.known and len(self.known) < 64:
            self.known.append(found)

    # -- the end ----------------------------------------------------------------

    def settle(self) -> None:
        self.loop.run_until_complete(self._settle())

    async def _settle(self) -> None:
        deadline = time.monotonic() + 20
        expected = 2 * self.ordinary_sent + self.settled  # + each settle's "still writing"
        while time.monotonic() < deadline:
            await self.alice.catch_up()
            await self.bob.catch_up()
            if self.checker.verdict().ok:
                break
            await asyncio.sleep(0.1)
        verdict = self.checker.verdict()
        assert verdict.ok, verdict.summary()
        before = 0  # pages newest first (after_seq 0 means "no lower bound")
        pulled: list[tuple[int, str]] = []
        while True:
            reply = await self.bob.request(pb.Frame(history=pb.HistoryRequest(
                conversation_id=self.pair, before_seq=before, limit=200)))
            page = reply.history_response.messages
            pulled = [(m.seq, m.message_id) for m in page] + pulled
            if not reply.history_response.has_more or not page:
                break
            before = page[0].seq
        assert self.checker.check_history("bob", "laptop", self.pair, pulled) == 0
        assert [seq for seq, _ in pulled] == list(range(1, expected + 1))
        await self.alice.send_ordinary(self.pair, "still writing")  # writes still work
        self.settled += 1
        await self._check_storage()
        assert not self.errors.records, self.errors.first()


    async def _check_storage(self) -> None:
        """Storage as the attackers left it: every user's inbox and every
        known conversation's timeline contiguous from 1 to its head."""
        storage = self.node.storage
        for user in ("alice", "bob", *ATTACKERS):
            seqs = [i.inbox_seq for i in await storage.inbox(user, 0, 1_000_000)]
            assert seqs == list(range(1, len(seqs) + 1)), f"{user}'s inbox: {seqs[:20]}..."
            assert len(seqs) == await storage.inbox_head(user), user
        for conversation_id in self.known:
            conversation = await storage.conversation(conversation_id)
            if conversation is None:
                continue
            seqs = [m.seq for m in await storage.history(conversation_id, before_seq=None,
                                                         after_seq=0, limit=1_000_000)]
            assert seqs == list(range(1, len(seqs) + 1)), f"{conversation_id}: {seqs[:20]}..."


def judge(draft: frames.Draft, frame: pb.Frame, reply: pb.Frame) -> None:
    """One request's reply: its own kind's answer or a documented error."""
    assert reply.id == frame.id or reply.error.fatal, (draft, reply)
    body = reply.WhichOneof("body")
    expected = "friends_response" if draft.kind == "push_ack" else harness.REPLIES.get(draft.kind)
    if body != "error":
        assert body == expected and draft.kind != "login", (draft.kind, reply)
    else:
        assert reply.error.code in harness.DOCUMENTED, (draft, reply)
    too_big = [name for name, value in draft.fields.items()
               if isinstance(value, int) and value > STORED_INT_MAX]
    served = (draft.kind in harness.REPLIES and draft.kind != "login") or draft.kind == "push_ack"
    if too_big and served and reply.error.code != ErrorCode.FRAME_TOO_LARGE:
        assert reply.error.code == ErrorCode.INVALID_ARGUMENT, (draft, reply)
        assert reply.error.message.startswith(f"field {draft.kind}."), reply
