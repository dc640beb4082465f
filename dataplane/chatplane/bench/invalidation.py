"""`chatplane bench invalidation`: from a change on one im instance to every
other instance honouring it (docs/caches.md).

    chatplane cluster up --ims 3 --data-dir ./c     # prints im_grpc=H:P,H:P,H:P
    chatplane bench invalidation --im H:P --im H:P --im H:P --data-dir ./c/data

Calls the im instances over gRPC as a gateway does (the role credential is
derived from the deployment's admin secret, found as the members find it:
CHATPLANE_ADMIN_SECRET, else the data dir's file; with CHATPLANE_GRPC_TLS_*
set, the bench presents that certificate). One user pair per run: every other
instance first sends as the blocked user, so each has the pair's relation
cached; then the partner blocks and unblocks, alternately, through each
instance in turn. After a change returns, every other instance is sent to
every `--poll-ms` until it honours the change (BLOCKED after a block, an ack
after an unblock); the figure per change is the time to the LAST instance
honouring it. Sends that an instance accepts before honouring a block are
counted as stale. Prints one JSON object; exits 1 when an instance did not
honour a change within `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from chatplane import settings as settings_mod
from chatplane.auth import ADMIN_SECRET_FILE
from chatplane.protocol.errors import ErrorCode
from chatplane.rpc.linksecurity import LinkSecurity
from chatplane.v1 import frames_pb2 as pb
from chatplane.v1 import services_pb2 as spb
from chatplane.v1 import services_pb2_grpc as sgrpc


@dataclass
class ImCaller:
    """One im instance, called as a gateway calls it."""

    address: str
    stub: sgrpc.ImStub
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def call(self, user: str, frame: pb.Frame) -> pb.Frame:
        frame.id = next(self.ids)
        reply = await self.stub.Handle(spb.ClientRequest(
            user_id=user, device_id="bench", frame=frame.SerializeToString()), timeout=5)
        return pb.Frame.FromString(reply.frame)

    async def send(self, user: str, conversation_id: str, cid: int) -> pb.Frame | None:
        """The reply, or None for UNAVAILABLE (an append fenced by another
        instance's lease: a gateway retries it)."""
        try:
            return await self.call(user, pb.Frame(send=pb.Send(
                conversation_id=conversation_id, cid=cid, text="invalidation bench")))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return None
            raise


def _acked(reply: pb.Frame | None) -> bool:
    return reply is not None and reply.WhichOneof("body") == "send_ack"


def _blocked(reply: pb.Frame | None) -> bool:
    return reply is not None and reply.WhichOneof("body") == "error" \
        and reply.error.code == ErrorCode.BLOCKED


@dataclass
class Run:
    every_s: list[float] = field(default_factory=list)  # per change: to the last instance
    each_s: list[float] = field(default_factory=list)  # per change and instance
    stale_sends: int = 0
    late: list[str] = field(default_factory=list)


async def honoured(im: ImCaller, user: str, conversation_id: str, cids: itertools.count[int],
                   block: bool, poll_s: float, timeout_s: float, run: Run) -> float | None:
    """Seconds until `im` honours the change, or None past `timeout_s`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        reply = await im.send(user, conversation_id, next(cids))
        if _blocked(reply) if block else _acked(reply):
            return time.monotonic() - start
        if block and _acked(reply):
            run.stale_sends += 1
        await asyncio.sleep(poll_s)
    return None


async def measure(addresses: list[str], security: LinkSecurity, changes: int, poll_s: float,
                  timeout_s: float) -> Run:
    tag = os.urandom(4).hex()
    user, partner = f"inv-{tag}-a", f"inv-{tag}-b"
    channels = [security.open_channel(a, "im", []) for a in addresses]
    ims = [ImCaller(a, sgrpc.ImStub(await c.__aenter__())) for a, c in zip(addresses, channels, strict=True)]
    run = Run()
    try:
        opened = await ims[0].call(user, pb.Frame(open_direct=pb.OpenDirect(
            peer_user_id=partner)))
        if opened.WhichOneof("body") != "open_direct_ack":
            raise RuntimeError(f"open_direct refused: {opened}")
        conversation_id = opened.open_direct_ack.conversation_id
        cids = itertools.count(1)
        for im in ims:  # each caches the pair's relation ("not blocked")
            if await honoured(im, user, conversation_id, cids, False, poll_s, timeout_s,
                              run) is None:
                raise RuntimeError(f"{im.address} never accepted a send")
        for n in range(changes):
            changer = ims[n % len(ims)]
            block = n % 2 == 0
            action = pb.BLOCK if block else pb.UNBLOCK
            reply = await changer.call(partner, pb.Frame(friend_op=pb.FriendOp(
                action=action, user_id=user)))
            if reply.WhichOneof("body") != "friend_op_ack":
                raise RuntimeError(f"friend_op refused by {changer.address}: {reply}")
            others = [im for im in ims if im is not changer]
            took = await asyncio.gather(*(
                honoured(im, user, conversation_id, cids, block, poll_s, timeout_s, run)
                for im in others))
            for im, t in zip(others, took, strict=True):
                if t is None:
                    run.late.append(f"change {n} ({'block' if block else 'unblock'}) on "
                                    f"{im.address}")
                else:
                    run.each_s.append(t)
            if all(t is not None for t in took):
                run.every_s.append(max(t for t in took if t is not None))
        if changes % 2:  # leave the pair unblocked
            await ims[0].call(partner, pb.Frame(friend_op=pb.FriendOp(
                action=pb.UNBLOCK, user_id=user)))
    finally:
        for channel in channels:
            await channel.__aexit__(None, None, None)
    return run


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def report(run: Run, instances: int, changes: int) -> dict[str, object]:
    ms = lambda s: round(s * 1000, 2)  # noqa: E731
    return {"instances": instances, "changes": changes, "honoured_by_all": len(run.every_s),
            "every_p50_ms": ms(statistics.median(run.every_s)) if run.every_s else None,
            "every_p99_ms": ms(_quantile(run.every_s, 0.99)) if run.every_s else None,
            "every_max_ms": ms(max(run.every_s)) if run.every_s else None,
            "each_p50_ms": ms(statistics.median(run.each_s)) if run.each_s else None,
            "each_p99_ms": ms(_quantile(run.each_s, 0.99)) if run.each_s else None,
            "stale_sends_after_block": run.stale_sends, "not_honoured": run.late}


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser("invalidation", help="time from a change on one im instance to "
                             "every other instance honouring it (a running cluster)",
                             description=__doc__.split("\n\n")[0])
    p.add_argument("--im", action="append", required=True, metavar="HOST:PORT",
                   help="an im instance's gRPC address (two or more; `cluster up` prints them)")
    p.add_argument("--data-dir", required=True,
                   help="the deployment's data dir (its admin secret keys the links)")
    p.add_argument("--changes", type=int, default=200, help="block/unblock changes (default 200)")
    p.add_argument("--poll-ms", type=float, default=2.0, help="between sends to an instance")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds an instance may take to honour one change")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    if len(args.im) < 2 or args.changes < 1 or not 0 < args.poll_ms <= 1000 \
            or args.timeout <= 0:
        print("chatplane bench invalidation: need two or more --im, --changes >= 1, "
              "--poll-ms in (0, 1000] and --timeout > 0", file=sys.stderr)
        return 2
    try:
        settings = settings_mod.load(overrides={"storage": {"data_dir": args.data_dir}})
    except settings_mod.SettingsError as exc:
        print(f"chatplane bench invalidation: {exc}", file=sys.stderr)
        return 2
    keyed = (settings.tls.grpc_ca or settings.tls.links_secret or settings.server.admin_secret
             or (Path(args.data_dir) / ADMIN_SECRET_FILE).exists())
    if not keyed:  # a key made up here would only be refused by every call
        print(f"chatplane bench invalidation: no {ADMIN_SECRET_FILE} in {args.data_dir} (the "
              "deployment's data dir, `data=` in `cluster up`'s line) and no "
              "CHATPLANE_ADMIN_SECRET", file=sys.stderr)
        return 2
    security = LinkSecurity.from_settings(settings, "gateway")
    try:
        run = asyncio.run(measure(args.im, security, args.changes, args.poll_ms / 1000,
                                  args.timeout))
    except (grpc.aio.AioRpcError, RuntimeError) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        print(f"chatplane bench invalidation: {detail}", file=sys.stderr)
        return 1
    print(json.dumps(report(run, len(args.im), args.changes)), flush=True)
    return 1 if run.late else 0
