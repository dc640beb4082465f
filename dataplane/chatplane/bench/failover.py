"""`chatplane bench failover`: kill -9 of a whole region under traffic, and how long
until the surviving region acks again (docs/architecture.md, "Failover").

The bench starts its own processes (`localregions.py`): two `chatplane up`
regions, eu and us, in `sync` durability, sharing a failover witness (`chatplane
witness`, which grants us the takeover once eu's lease expired), with the
deployed probe settings unless the environment sets its own. It has to: it kills
a region's every process with -9 and starts it again on its store, which it can
only do to processes it owns. Per run:

1. `--pairs` 1:1 chats homed in eu (first send there), each between a device
   connected to eu and one connected to us, all SDK clients given both regions'
   URLs, every device sending one message after the other (50 ms apart);
2. kill -9 of eu after `--before-kill` seconds; the clients move to us, which takes
   over eu's homes once eu has been silent for `CHATPLANE_FAILOVER_AFTER_S`;
3. the **failover time**: from the kill to the first ack of a send made after it
   (so no reply already on its way counts); `--after-kill` seconds more traffic;
4. eu is started again on its store, learns that us holds its chats, catches up;
   a fresh device of each eu user, connected to eu only, sends once: forwarded to
   us, never sequenced in eu; eu's history must equal us's, seq for seq.

The checker judges every device (nothing acked lost, nothing twice, one message
per seq). It prints one JSON line per run, then the medians and the verdicts;
exit 0 when every run was clean, converged and sequenced nothing in eu.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatplane.auth import TokenSigner
from chatplane.bench import scrape
from chatplane.bench.localregions import KEY, LocalRegion, LocalRegions
from chatplane.checker import DeliveryChecker, Verdict
from chatplane.client import Client, Message

signer = TokenSigner(KEY)
ACK_WAIT_S = 30.0  # no ack this long after the kill: the run failed


@dataclass
class FailoverRun:
    failover_s: float  # kill -> first ack of a send made after it
    acked_before: int  # acks before the kill
    acked_after: int  # acks of sends made after the kill
    verdict: Verdict  # every device, judged at the end
    histories_equal: bool  # eu's store (after its return) and us's hold the same messages
    forwarded_by_eu: int  # sends eu's clients made after its return, forwarded to us
    sequenced_by_eu: int  # ... and sequenced by eu itself (must be 0)
    takeover: dict[str, Any] = field(default_factory=dict)  # us's /v1/peers failover
    grants: list[str] = field(default_factory=list)  # the witness's grants (its log lines)
    late_regions: list[str] = field(default_factory=list)  # where the late devices were

    @property
    def ok(self) -> bool:
        return self.verdict.ok and self.histories_equal and self.sequenced_by_eu == 0

    def to_dict(self) -> dict[str, Any]:
        return {"failover_s": round(self.failover_s, 2), "acked_before": self.acked_before,
                "acked_after": self.acked_after, "checker_ok": self.verdict.ok,
                "checker": self.verdict.summary(), "histories_equal": self.histories_equal,
                "forwarded_by_eu": self.forwarded_by_eu, "sequenced_by_eu": self.sequenced_by_eu,
                "late_regions": self.late_regions, "grants": self.grants,
                "takeover": self.takeover, "ok": self.ok}


class Device:
    """An SDK client of one user's device, its receipts fed to the checker."""

    def __init__(self, client: Client, user: str, device: str, checker: DeliveryChecker) -> None:
        self.client, self.user, self.device, self.checker = client, user, device, checker
        checker.add_device(user, device)
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        async for m in self.client.messages():
            self.checker.record_receipt(self.user, self.device, m.conversation_id, m.seq,
                                        m.message_id)

    async def stop(self) -> None:
        await self.client.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


async def device_at(urls: list[str], user: str, device: str,
                    checker: DeliveryChecker) -> Device:
    client = Client(urls, signer.mint(user, device), request_timeout_s=30)
    await client.connect()
    return Device(client, user, device, checker)


async def _device_in(region: LocalRegion, user: str, device: str,
                     checker: DeliveryChecker) -> Device:
    """A device given only `region`'s URL, logged in there. Its dispatch also names the
    peer's gateway (the failover fallback), which a loaded machine's slow connect to
    the region's own gateway can make it use: then it connects again."""
    for _ in range(5):
        dev = await device_at([region.url], user, device, checker)
        if dev.client.position()["region"] == region.name:
            return dev
        await dev.stop()
    raise RuntimeError(f"{user}/{device} could not log in to {region.name}'s own gateway")


def _metric(region: LocalRegion, name: str) -> float:
    status, text = region.get("/metrics")
    if status != 200:
        raise RuntimeError(f"{region.name}'s /metrics: {status} {text[:200]}")
    return sum(v for k, v in scrape.parse(text).items() if k.split("{", 1)[0] == name)


async def history_of(client: Client, conversation: str) -> list[Message]:
    """The whole history, oldest first. Paged back from the newest: a history request
    without a cursor (`after_seq` 0) answers the newest page, so paging forward from 0
    read only the newest 200 messages of a longer chat."""
    out: list[Message] = []
    while True:
        page = await client.history(conversation, before_seq=out[0].seq if out else None,
                                    limit=200)
        out[:0] = page
        if len(page) < 200 or out[0].seq <= 1:
            return out


async def _same_history(theirs: Device, ours: Device, chat: str) -> bool:
    """Whether the two devices' regions hold the same history of `chat` (waits up to 10 s
    for the returning region to catch up)."""
    for _ in range(100):
        a = [(m.seq, m.message_id) for m in await history_of(theirs.client, chat)]
        b = [(m.seq, m.message_id) for m in await history_of(ours.client, chat)]
        if a == b:
            return True
        await asyncio.sleep(0.1)
    return False


async def run_failover(base: Path, *, pairs: int = 4, before_kill_s: float = 2.0,
                       after_kill_s: float = 6.0,
                       env: dict[str, str] | None = None) -> FailoverRun:
    """One run (see the module docstring) on regions started under `base`."""
    regions = LocalRegions(base, durability="sync", witness=True, env=env)
    await asyncio.to_thread(regions.start_all)
    eu, us = regions["eu"], regions["us"]
    devices: list[Device] = []
    try:
        checker = DeliveryChecker()
        chats = []
        for i in range(pairs):
            a = await device_at([eu.url, us.url], f"a{i}", "d", checker)
            b = await device_at([us.url, eu.url], f"b{i}", "d", checker)
            devices += [a, b]
            chat = await a.client.direct(f"b{i}")
            if await b.client.direct(f"a{i}") != chat:
                raise RuntimeError("the two sides of a direct chat got different ids")
            checker.add_member(chat, f"a{i}")
            checker.add_member(chat, f"b{i}")
            ack = await a.client.send_text(chat, "home")  # places the home in eu
            checker.record_ack(a.user, a.device, chat, ack.seq, ack.message_id, cid=ack.cid)
            chats += [chat, chat]
        killed_at: list[float] = []
        acks: list[tuple[float, bool]] = []  # (when, whether the send began after the kill)
        stop = asyncio.Event()

        async def send(device: Device, chat: str) -> None:
            i = 0
            while not stop.is_set():
                began_after = bool(killed_at)
                ack = await device.client.send_text(chat, f"{device.user}-{i}")
                checker.record_ack(device.user, device.device, chat, ack.seq, ack.message_id,
                                   cid=ack.cid)
                acks.append((time.monotonic(), began_after))
                i += 1
                await asyncio.sleep(0.05)

        traffic = [asyncio.ensure_future(send(d, c)) for d, c in zip(devices, chats, strict=True)]
        await asyncio.sleep(before_kill_s)
        acked_before = len(acks)
        await asyncio.to_thread(regions.kill, "eu")  # every process of the region
        killed_at.append(time.monotonic())
        while not any(after for _, after in acks):
            if time.monotonic() > killed_at[0] + ACK_WAIT_S:
                raise RuntimeError(f"no send acked within {ACK_WAIT_S:g} s of the region's loss")
            await asyncio.sleep(0.02)
        failover_s = min(t for t, after in acks if after) - killed_at[0]
        await asyncio.sleep(after_kill_s)  # chat goes on in us
        takeover = us.peers_report().get("failover", {})

        await asyncio.to_thread(regions.start, "eu")  # eu returns on its store
        deadline = time.monotonic() + 20
        while not any(p.get("name") == "eu" and p.get("reachable")
                      for p in us.peers_report().get("peers", [])):
            if time.monotonic() > deadline:
                raise RuntimeError("us never saw eu again")
            await asyncio.sleep(0.1)
        await asyncio.sleep(3.0)  # traffic while eu catches up
        stop.set()
        await asyncio.wait_for(asyncio.gather(*traffic), 60)
        acked_after = sum(1 for _, after in acks if after)

        # eu's own clients now: their sends go to the home us holds, never sequenced in eu
        forwarded = _metric(eu, "chatplane_region_sends_forwarded_total")
        served = _metric(us, "chatplane_region_sends_served_total")
        late = [await _device_in(eu, f"a{i}", "late", checker) for i in range(pairs)]
        devices += late
        for i, device in enumerate(late):
            ack = await asyncio.wait_for(device.client.send_text(chats[2 * i], "back"), 30)
            checker.record_ack(f"a{i}", "late", chats[2 * i], ack.seq, ack.message_id)
        late_regions = [device.client.position()["region"] for device in late]
        forwarded_by_eu = int(_metric(eu, "chatplane_region_sends_forwarded_total") - forwarded)
        sequenced_by_eu = pairs - int(_metric(us, "chatplane_region_sends_served_total") - served)
        equal = all([await _same_history(devices[2 * i + 1], late[i], chats[2 * i])
                     for i in range(pairs)])
        await asyncio.sleep(1.0)  # the last acks' deliveries
        return FailoverRun(failover_s, acked_before, acked_after, checker.verdict(), equal,
                           forwarded_by_eu, sequenced_by_eu, takeover, regions.grants(),
                           late_regions)
    finally:
        for device in devices:
            await device.stop()
        await asyncio.to_thread(regions.close)


def summary(runs: list[FailoverRun]) -> dict[str, Any]:
    times = [r.failover_s for r in runs]
    return {"runs": len(runs), "failover_s_median": round(statistics.median(times), 2),
            "failover_s_min": round(min(times), 2), "failover_s_max": round(max(times), 2),
            "acked_after_median": statistics.median(r.acked_after for r in runs),
            "checker_clean": all(r.verdict.ok for r in runs),
            "lost": sum(r.verdict.totals.get("lost", 0) for r in runs),
            "duplicated": sum(r.verdict.totals.get("duplicated", 0) for r in runs),
            "converged": all(r.histories_equal for r in runs),
            "sequenced_by_returning_region": sum(r.sequenced_by_eu for r in runs),
            "ok": all(r.ok for r in runs)}


def run_command(args: argparse.Namespace) -> int:
    from chatplane.bench import procstat, report

    if args.runs < 1 or args.pairs < 1 or args.before_kill <= 0 or args.after_kill < 0:
        print("chatplane bench failover: --runs and --pairs must be at least 1, "
              "--before-kill positive", file=sys.stderr)
        return 2
    runs: list[FailoverRun] = []
    lines: list[dict[str, Any]] = []
    for n in range(args.runs):
        load = procstat.loadavg()
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
            try:
                run = asyncio.run(run_failover(Path(tmp), pairs=args.pairs,
                                               before_kill_s=args.before_kill,
                                               after_kill_s=args.after_kill))
            except (RuntimeError, OSError, TimeoutError) as exc:
                print(f"chatplane bench failover: run {n + 1}: {exc}", file=sys.stderr)
                return 1
        runs.append(run)
        lines.append({"run": n + 1, "loadavg_before": load, **run.to_dict()})
        if not args.quiet:
            print(f"run {n + 1}: failover {run.failover_s:.2f} s, acked before/after the kill "
                  f"{run.acked_before}/{run.acked_after}, {run.verdict.summary()}, "
                  f"converged={'yes' if run.histories_equal else 'NO'}, late sends forwarded/"
                  f"sequenced in eu {run.forwarded_by_eu}/{run.sequenced_by_eu}, load {load}",
                  flush=True)
    total = summary(runs)
    print(f"failover (kill -9 -> first acked send in the survivor): median "
          f"{total['failover_s_median']} s (min {total['failover_s_min']}, max "
          f"{total['failover_s_max']}) over {total['runs']} runs; checker "
          f"{'CLEAN' if total['checker_clean'] else 'FAILED'} (lost {total['lost']}, "
          f"duplicated {total['duplicated']}); converged "
          f"{'yes' if total['converged'] else 'NO'}", flush=True)
    report.emit({"workload": "failover", "pairs": args.pairs, "summary": total, "runs": lines},
                args.json)
    return 0 if total["ok"] else 1


def add_parser(workloads: argparse._SubParsersAction) -> None:
    p = workloads.add_parser(
        "failover", help="kill -9 of a region under traffic: region loss to the first acked "
        "send in the survivor (starts two regions and a witness here)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs, each on fresh regions (default 3)")
    p.add_argument("--pairs", type=int, default=4, help="1:1 chats homed in the killed region, "
                   "one device in each region each (default 4)")
    p.add_argument("--before-kill", type=float, default=2.0,
                   help="seconds of traffic before the kill (default 2)")
    p.add_argument("--after-kill", type=float, default=6.0,
                   help="seconds of traffic in the survivor after its first ack (default 6)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    p.add_argument("--quiet", action="store_true", help="no line per run")
    p.set_defaults(func=run_command)
