"""Failover of a whole region (docs/architecture.md, "Failover"; docs/benchmarks.md,
"Regions: failover"): two `chatplane up` regions in `sync` durability sharing a failover
witness (`chatplane witness`, which grants us the takeover once eu's lease expired), chats homed in eu
between a user connected to eu and one connected to us, every device sending one message
after the other; kill -9 of eu; the clients (the SDK given both regions' URLs) move to
us, which takes over eu's homes once eu has been silent for CHATPLANE_FAILOVER_AFTER_S,
and sends are acked again. Then eu is started again on its store: it learns that us
holds its chats now, catches up, and forwards its clients' sends there.

The **failover time** is from the kill to the first ack of a send made after it (so no
reply already on its way counts). Run as a tool (default probe settings, as deployed):

    python3 -m tests.tools.failoverbench --runs 3

`tests/regions/test_failover_e2e.py` runs the same scenario and asserts on it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker, Verdict
from chatplane.protocol.clientsession import Message
from tests.support.regions import (
    SHARED_KEY,
    RegionProcess,
    WitnessProcess,
    region_device,
    sees,
    wait_for,
)
from tests.support.traffic import Device

signer = TokenSigner(SHARED_KEY)
DEPLOYED_PROBES = {"CHATPLANE_PEER_PROBE_S": "2", "CHATPLANE_PEER_TIMEOUT_S": "1"}


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


def _regions(base: Path, env: dict[str, str]) -> tuple[RegionProcess, RegionProcess]:
    """eu and us, each given the other's gateway as dispatch's fallback (and `env`)."""
    eu = RegionProcess(base / "eu", "eu", env=env)
    us = RegionProcess(base / "us", "us", env=env)
    for me, other in ((eu, us), (us, eu)):  # the peer's public gateway: dispatch's fallback
        me.set_peers([{"name": other.name, "endpoint": other.endpoint,
                       "ws": f"ws://{other.host}:{other.port}/ws"}])
    return eu, us


async def _device_in(region: RegionProcess, user: str, device: str) -> Device:
    """A device given only `region`'s URL, logged in there. Its dispatch also names the
    peer's gateway (the failover fallback), which a loaded machine's slow connect to
    the region's own gateway can make it use: then it connects again."""
    for _ in range(5):
        dev = await region_device([region.url], user, device, DeliveryChecker(), timeout_s=30)
        if dev.client.position()["region"] == region.name:
            return dev
        await dev.stop()
    raise AssertionError(f"{user}/{device} could not log in to {region.name}'s own gateway")


def _holds_lease(region: RegionProcess) -> bool:
    witness = json.loads(region.get("/v1/peers")[1])["failover"]["witness"]
    return bool(witness and witness["held"])


def _metric(region: RegionProcess, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200, text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f"{name} ") or line.startswith(f"{name}{{"))


async def history_of(device: Device, conversation: str) -> list[Message]:
    """The whole history, oldest first. Paged back from the newest: a history request
    without a cursor (`after_seq` 0) answers the newest page, so paging forward from 0
    read only the newest 200 messages of a longer chat."""
    out: list[Message] = []
    while True:
        page = await device.client.history(conversation, before_seq=out[0].seq if out else None,
                                           limit=200)
        out[:0] = page
        if len(page) < 200 or out[0].seq <= 1:
            return out


async def run_failover(base: Path, *, pairs: int = 4, after_kill_s: float = 6.0,
                       env: dict[str, str] | None = None) -> FailoverRun:
    witness = WitnessProcess(base / "witness")
    eu, us = _regions(base, {"CHATPLANE_REGION_DURABILITY": "sync",
                             "CHATPLANE_FAILOVER_WITNESS": witness.endpoint, **(env or {})})
    devices: list[Device] = []
    try:  # a start that fails stops what was started
        witness.start()
        eu.start()
        us.start()
        for me, other in ((eu, us), (us, eu)):
            await asyncio.to_thread(wait_for, functools.partial(sees, me, other.name), 20,
                                    f"{me.name} sees {other.name}")
        for me in (eu, us):  # one slow to start may be taken over (no homes) until lifted
            await asyncio.to_thread(wait_for, functools.partial(_holds_lease, me), 20,
                                    f"{me.name} holds its witness lease")
        checker = DeliveryChecker()
        chats = []
        for i in range(pairs):
            a = await region_device([eu.url, us.url], f"a{i}", "d", checker, timeout_s=30)
            b = await region_device([us.url, eu.url], f"b{i}", "d", checker, timeout_s=30)
            chat = await a.client.direct(f"b{i}")
            assert await b.client.direct(f"a{i}") == chat
            checker.add_member(chat, f"a{i}")
            checker.add_member(chat, f"b{i}")
            ack = await a.client.send_text(chat, "home")  # places the home in eu
            checker.record_ack(a.user, a.device, chat, ack.seq, ack.message_id, cid=ack.cid)
            devices += [a, b]
            chats += [chat, chat]
        killed_at: list[float] = []
        acks: list[tuple[float, bool]] = []  # (when, whether the send began after the kill)
        stop = asyncio.Event()

        async def send(device: Device, chat: str) -> None:
            i = 0
            while not stop.is_set():
                began_after = bool(killed_at)
                ack = await device.client.send_text(chat, f"{device.user}-{i}")
                device.checker.record_ack(device.user, device.device, chat, ack.seq,
                                          ack.message_id, cid=ack.cid)
                acks.append((time.monotonic(), began_after))
                i += 1
                await asyncio.sleep(0.05)

        traffic = [asyncio.ensure_future(send(d, c)) for d, c in zip(devices, chats, strict=True)]
        await asyncio.sleep(2.0)
        acked_before = len(acks)
        await asyncio.to_thread(eu.kill)  # kill -9 of every process of the region
        killed_at.append(time.monotonic())
        deadline = killed_at[0] + 30
        while not any(after for _, after in acks) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        firsts = [t for t, after in acks if after]
        assert firsts, "no send acked within 30 s of the region's loss"
        failover_s = min(firsts) - killed_at[0]
        await asyncio.sleep(after_kill_s)  # chat goes on in us
        takeover = json.loads(us.get("/v1/peers")[1]).get("failover", {})

        await asyncio.to_thread(eu.start)  # eu returns on its store
        await asyncio.to_thread(wait_for, lambda: us.peers()["eu"]["reachable"], 20,
                                "us sees eu again")
        await asyncio.sleep(3.0)  # traffic while eu catches up
        stop.set()
        await asyncio.wait_for(asyncio.gather(*traffic), 60)
        acked_after = sum(1 for _, after in acks if after)

        # eu's own clients now: their sends go to the home us holds, never sequenced in eu
        forwarded = _metric(eu, "chatplane_region_sends_forwarded_total")
        served = _metric(us, "chatplane_region_sends_served_total")
        late = [await _device_in(eu, f"a{i}", "late") for i in range(pairs)]
        for i, device in enumerate(late):
            ack = await asyncio.wait_for(device.client.send_text(chats[2 * i], "back"), 30)
            checker.record_ack(f"a{i}", "late", chats[2 * i], ack.seq, ack.message_id)
        late_regions = [device.client.position()["region"] for device in late]
        forwarded_by_eu = int(_metric(eu, "chatplane_region_sends_forwarded_total") - forwarded)
        sequenced_by_eu = pairs - int(_metric(us, "chatplane_region_sends_served_total") - served)

        # eu converged: its store holds what us holds, seq for seq
        equal = True
        for i, device in enumerate(late):
            async def same(chat: str = chats[2 * i], dev: Device = devices[2 * i + 1],
                           here: Device = device) -> bool:
                theirs = [(m.seq, m.message_id) for m in await history_of(dev, chat)]
                ours = [(m.seq, m.message_id) for m in await history_of(here, chat)]
                return theirs == ours

            for _ in range(100):
                if await same():
                    break
                await asyncio.sleep(0.1)
            else:
                equal = False
        await asyncio.sleep(1.0)  # the last acks' deliveries
        for device in late:
            await device.stop()
        return FailoverRun(failover_s, acked_before, acked_after, checker.verdict(), equal,
                           forwarded_by_eu, sequenced_by_eu, takeover, witness.granted(),
                           late_regions)
    finally:
        for device in devices:
            await device.stop()
        for region in (eu, us):
            region.stop()
        witness.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    times = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(run_failover(Path(tmp), pairs=args.pairs, env=DEPLOYED_PROBES))
        times.append(result.failover_s)
        print(json.dumps({"run": run + 1, "failover_s": round(result.failover_s, 2),
                          "acked_before": result.acked_before, "acked_after": result.acked_after,
                          "checker_ok": result.verdict.ok,
                          "checker": result.verdict.summary(),
                          "histories_equal": result.histories_equal,
                          "forwarded_by_eu": result.forwarded_by_eu,
                          "sequenced_by_eu": result.sequenced_by_eu,
                          "takeover": result.takeover}), flush=True)
    print(json.dumps({"runs": len(times), "failover_s_min": round(min(times), 2),
                      "failover_s_median": round(statistics.median(times), 2),
                      "failover_s_max": round(max(times), 2)}))


if __name__ == "__main__":
    main()
