"""Workload W1, one process: P sender/receiver pairs of 1:1 chat at an offered rate.

Each pair is two SDK clients (one user per side) sharing one direct
conversation. One pacing loop offers the total rate R: every millisecond or so
it works out how many messages are due since the start and hands them out
round-robin to the pairs' queues, each entry stamped with its intended send
time. Each pair drains its queue with a small window of sender loops (so a slow
ack does not cap a pair at one message per round trip), never one task per
message. Every client, the sending one too, consumes its `messages()` stream
into the `DeliveryChecker`; the receiver side also records the latency from the
send call (a monotonic timestamp carried in the text) to receipt.

Across regions (`--receiver-url`), the receiving side's clients connect to
another region's server: the latency is then the send call in one region to the
receipt in the other, and the receiving region's replication lag
(`chatplane_region_replication_lag_entries` at its /metrics) is sampled every
`LAG_SAMPLE_S` while load is offered and drained.

Options: several devices per user (each a client that must get every
message), chaos (abruptly cut a random share of the connections every so many
seconds while load is offered), and the server's CPU read from its /metrics
around the run.

After D seconds the pacing stops, what was due but not yet sent is dropped
(counted as `unsent`), in-flight sends get `drain_timeout` seconds to be acked,
and the run waits (within the same bound) for every acked message to reach
every device. Each receiver then pulls its conversation's last page with
`history()` for the checker, and the clients close.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatplane.bench import procstat, scrape, tiercpu
from chatplane.bench.latency import LatencyHistogram
from chatplane.checker import DeliveryChecker

DEVICE = "bench"
_STOP = -1  # queue sentinel: the sender loop exits
CPU_METRIC = "chatplane_process_cpu_seconds_total"
HISTORY_PAGE = 50  # messages per conversation pulled back at the end
LAG_METRIC = "chatplane_region_replication_lag_entries"
LAG_SAMPLE_S = 0.25  # a /metrics read of the receiving region this often


class SetupError(RuntimeError):
    """The run could not start: no server, a bad token key, a refused login."""


class ChatClient(Protocol):
    """The part of `chatplane.client.Client` the bench drives."""

    reconnects: int
    # second inbox entries of a message, dropped by the per-conversation rule
    # (docs/protocol.md); the SDK drops them too but does not count them apart
    duplicate_entries: int

    async def connect(self) -> None: ...
    async def direct(self, user_id: str) -> str: ...
    async def send_text(self, conversation_id: str, text: str) -> Any: ...
    def messages(self) -> AsyncIterator[Any]: ...
    async def history(
        self, conversation_id: str, before_seq: int | None = None, limit: int = 50
    ) -> list[Any]: ...
    async def close(self) -> None: ...
    def abort_connection(self) -> None: ...


Connector = Callable[[str, str], ChatClient]  # (user, device) -> unconnected client
Progress = Callable[[dict[str, Any]], None]


@dataclass
class DirectConfig:
    pairs: int = 100
    rate: float = 2000.0  # offered msgs/s, all pairs together
    duration: float = 20.0
    size: int = 32  # text bytes per message (at least the timestamp header)
    window: int = 32  # concurrent unacked sends per pair
    drain_timeout: float = 10.0
    connect_timeout: float = 60.0
    connect_concurrency: int = 50
    cut_every: float = 0.0  # > 0: every so many seconds, cut some clients' connections
    cut_fraction: float = 0.1  # ... this share of all clients, picked at random
    user_prefix: str = "w1"
    metrics_url: str = ""  # the server's base URL: read its CPU from /metrics around the run
    devices: int = 1  # devices per user; each must get every message (own sends too)
    ca: str = ""  # PEM CA to verify an https:// server with (else the system CAs)
    server_pid: int = 0  # > 0: read the server's CPU from /proc/PID/stat, not /metrics
    lag_metrics_url: str = ""  # the receiving region's admin URL: sample its replication lag
    # a cluster's processes (name -> PID, bench/tiercpu.py): CPU per process, summed as the server's
    cpu_pids: dict[str, int] = field(default_factory=dict)
    # across regions: the receiver opens each chat and sends first ("home"), so the chat is
    # homed in the receivers' region and every timed send is forwarded there (bench regions)
    home_at_receiver: bool = False


async def _no_gate() -> None:
    return None


async def server_cpu(url: str, ca: str = "", pid: int = 0) -> float | None:
    """The CPU seconds of the server: from /proc/PID/stat when its PID is known,
    else from `url`'s /metrics (`chatplane_process_cpu_seconds_total`); None
    when neither is available."""
    if pid > 0:
        return procstat.cpu_seconds(pid)
    return (await scrape.read(url, ca)).get(CPU_METRIC) if url else None


@dataclass
class _Pair:
    index: int
    sender_user: str
    receiver_user: str
    sender: ChatClient
    receiver: ChatClient
    conv: str = ""
    due: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    counter: int = 0
    # every device as (user, device id, client, is the receiving side); [0], [1] above
    devices: list[tuple[str, str, ChatClient, bool]] = field(default_factory=list)


class DirectRun:
    """State of one W1 run in this process; `run()` returns its result dict."""

    def __init__(self, config: DirectConfig, connect: Connector, on_progress: Progress,
                 receive_connect: Connector | None = None) -> None:
        self.cfg = config
        self.connector = connect
        # the receiving side's clients: another region's server, or the same as the senders'
        self.receive_connector = receive_connect or connect
        self.on_progress = on_progress
        self.checker = DeliveryChecker()
        self.hist = LatencyHistogram()  # send call -> receipt at the receiving side
        self.ack_hist = LatencyHistogram()  # send call -> ack at the sender
        self.pairs: list[_Pair] = []
        self.clients: list[ChatClient] = []  # every client made, for close()
        self.sent = self.acked = self.failed = self.delivered = self.echoed = 0
        self.unsent = self.unacked = 0
        self.max_queue_delay_us = 0
        self.t_start = 0.0
        self.send_elapsed = 0.0
        self.cpu_s = 0.0  # this process's CPU time, offering load to the last delivery
        self.loop_lag = LatencyHistogram()
        self.cuts = 0
        self.history_pages = self.history_failed = 0
        self.server_cpu_s: float | None = None
        self.processes_cpu_s: dict[str, float] = {}  # per cluster process (cfg.cpu_pids)
        self.pad = "x" * max(0, config.size - 24)
        self.errors: list[str] = []
        self.lag_samples: list[float] = []  # the receiving region's replication lag, entries
        self.homing = 0  # "home" messages the receivers sent first (home_at_receiver)

    # -- setup ---------------------------------------------------------------
    async def _connect_pair(self, i: int, gate: asyncio.Semaphore) -> _Pair:
        prefix = self.cfg.user_prefix
        s_user, r_user = f"{prefix}s{i}", f"{prefix}r{i}"
        devices: list[tuple[str, str, ChatClient, bool]] = []
        async with gate:
            for k in range(max(1, self.cfg.devices)):
                device = DEVICE if k == 0 else f"{DEVICE}{k}"
                for user, is_receiver in ((s_user, False), (r_user, True)):
                    make = self.receive_connector if is_receiver else self.connector
                    client = make(user, device)
                    self.clients.append(client)
                    devices.append((user, device, client, is_receiver))
            await asyncio.gather(*(d[2].connect() for d in devices))
            sender, receiver = devices[0][2], devices[1][2]
            home = None
            if self.cfg.home_at_receiver:  # the first send places the home
                home = await receiver.send_text(await receiver.direct(s_user), "home")
                self.homing += 1
            conv = await sender.direct(r_user)
        for user, device, _, _ in devices:
            self.checker.add_member(conv, user)
            self.checker.add_device(user, device)
        if home is not None:
            self.checker.record_ack(r_user, DEVICE, home.conversation_id, home.seq, home.message_id)
        return _Pair(i, s_user, r_user, sender, receiver, conv, devices=devices)

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.cfg.connect_concurrency)
        try:
            async with asyncio.timeout(self.cfg.connect_timeout):
                self.pairs = list(
                    await asyncio.gather(*(self._connect_pair(i, gate) for i in range(self.cfg.pairs)))
                )
        except Exception as exc:
            raise SetupError(f"cannot connect the bench's clients: {exc!r}") from exc

    # -- the loops -------------------------------------------------------------
    async def _receive(self, client: ChatClient, user: str, device: str, is_receiver: bool) -> None:
        record = self.checker.record_receipt
        hist = self.hist
        async for m in client.messages():
            now = time.monotonic_ns()
            record(user, device, m.conversation_id, m.seq, m.message_id)
            if is_receiver:
                self.delivered += 1
                head = m.text.split(" ", 1)[0]
                if head.isdigit():
                    hist.record((now - int(head)) // 1000)
            else:
                self.echoed += 1

    async def _send(self, pair: _Pair) -> None:
        queue = pair.due
        while True:
            intended = await queue.get()
            if intended == _STOP:
                return
            t0 = time.monotonic_ns()
            late = (t0 - intended) // 1000
            if late > self.max_queue_delay_us:
                self.max_queue_delay_us = late
            pair.counter += 1
            text = f"{t0} {pair.index} {pair.counter} {self.pad}"
            self.sent += 1
            try:
                ack = await pair.sender.send_text(pair.conv, text)
            except Exception as exc:  # the SDK retries by itself; this is final
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(f"send: {exc!r}")
                continue
            self.acked += 1
            self.ack_hist.record((time.monotonic_ns() - t0) // 1000)
            self.checker.record_ack(pair.sender_user, DEVICE, ack.conversation_id, ack.seq, ack.message_id)

    async def _pace(self) -> None:
        rate, pairs = self.cfg.rate, self.pairs
        n_pairs = len(pairs)
        step_ns = 1e9 / rate
        start_ns = time.monotonic_ns()
        self.t_start = time.monotonic()
        end = self.t_start + self.cfg.duration
        issued = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - self.t_start) * rate) - issued
            for _ in range(due):
                pairs[issued % n_pairs].due.put_nowait(start_ns + int(issued * step_ns))
                issued += 1
            await asyncio.sleep(0.001)
        self.send_elapsed = time.monotonic() - self.t_start

    async def _report_progress(self) -> None:
        """Each second a progress snapshot; meanwhile, every 5 ms, how late this
        process's event loop wakes up (a stalled bench inflates latencies)."""
        last_delivered, last_t = 0, time.monotonic()
        lag = self.loop_lag
        while True:
            for _ in range(200):
                t0 = time.monotonic_ns()
                await asyncio.sleep(0.005)
                lag.record(max(0, (time.monotonic_ns() - t0) // 1000 - 5000))
            now = time.monotonic()
            per_message = max(1, self.cfg.devices)  # receipts per message
            rate = (self.delivered - last_delivered) / per_message / max(now - last_t, 1e-6)
            last_delivered, last_t = self.delivered, now
            self.on_progress(self.snapshot(rate))

    def snapshot(self, rate: float) -> dict[str, Any]:
        return {
            "elapsed": round(time.monotonic() - self.t_start, 1) if self.t_start else 0.0,
            "duration": self.cfg.duration,
            "sent": self.sent,
            "acked": self.acked,
            "delivered": self.delivered,
            "rate": round(rate, 1),
            "p99_us": self.hist.percentile(99),
            "latency": self.hist.to_dict(),
        }

    async def _cut(self) -> None:
        """Abruptly cut random clients' connections while load is offered; the
        SDK must reconnect and resume with nothing lost, doubled or reordered."""
        rng = random.Random()
        count = max(1, round(len(self.clients) * self.cfg.cut_fraction))
        while True:
            await asyncio.sleep(self.cfg.cut_every)
            for client in rng.sample(self.clients, min(count, len(self.clients))):
                client.abort_connection()
                self.cuts += 1

    async def _sample_lag(self) -> None:
        """The receiving region's replication lag, summed over its peers, every
        LAG_SAMPLE_S (a read that fails or lacks the metric is skipped)."""
        while True:
            found = await scrape.read(self.cfg.lag_metrics_url, self.cfg.ca)
            values = [v for k, v in found.items() if k.split("{", 1)[0] == LAG_METRIC]
            if values:
                self.lag_samples.append(sum(values))
            await asyncio.sleep(LAG_SAMPLE_S)

    def lag_summary(self) -> dict[str, Any] | None:
        if not self.lag_samples:
            return None
        ordered = sorted(self.lag_samples)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return {"samples": len(ordered), "max": ordered[-1], "p99": p99,
                "mean": round(sum(ordered) / len(ordered), 2)}

    async def _check_history(self) -> None:
        """Roaming: each receiver pulls the last page of its conversation, which
        must hold exactly what was acked and delivered at those seqs."""

        async def one(pair: _Pair) -> None:
            page = await pair.receiver.history(pair.conv, limit=HISTORY_PAGE)
            self.checker.check_history(
                pair.receiver_user, DEVICE, pair.conv, [(m.seq, m.message_id) for m in page]
            )
            self.history_pages += 1

        try:
            async with asyncio.timeout(15):
                await asyncio.gather(*(one(p) for p in self.pairs))
        except Exception as exc:
            self.history_failed = len(self.pairs) - self.history_pages
            if len(self.errors) < 5:
                self.errors.append(f"history: {exc!r}")

    async def _wait_delivered(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            want = (self.acked + self.homing) * max(1, self.cfg.devices)
            if self.delivered >= want and self.echoed >= want:
                return
            await asyncio.sleep(0.05)

    # -- the whole run ---------------------------------------------------------
    async def run(self, start_gate: Callable[[], Awaitable[None]] = _no_gate) -> dict[str, Any]:
        cfg = self.cfg
        receivers: list[asyncio.Task[None]] = []
        senders: list[asyncio.Task[None]] = []
        progress: asyncio.Task[None] | None = None
        sampler: asyncio.Task[None] | None = None
        thresholds = gc.get_threshold()
        try:
            await self._connect_all()
            # Freeze what setup made and make young collections rarer: a
            # collection pause stalls every client of this process at once.
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)
            for p in self.pairs:
                receivers.extend(
                    asyncio.create_task(self._receive(client, user, device, is_receiver))
                    for user, device, client, is_receiver in p.devices
                )
                senders.extend(asyncio.create_task(self._send(p)) for _ in range(cfg.window))
            await start_gate()
            # the server's CPU over the offering window only (not setup, not history)
            cpu_before = await server_cpu(cfg.metrics_url, cfg.ca, cfg.server_pid)
            procs_before = tiercpu.read(cfg.cpu_pids)
            bench_cpu0 = time.process_time()
            progress = asyncio.create_task(self._report_progress())
            chaos = asyncio.create_task(self._cut()) if cfg.cut_every > 0 else None
            if cfg.lag_metrics_url:
                sampler = asyncio.create_task(self._sample_lag())
            await self._pace()
            if chaos is not None:
                chaos.cancel()
            for p in self.pairs:  # drop what was due but not sent, then stop the loops
                while not p.due.empty():
                    p.due.get_nowait()
                    self.unsent += 1
                for _ in range(cfg.window):
                    p.due.put_nowait(_STOP)
            deadline = time.monotonic() + cfg.drain_timeout
            if senders:
                _, pending = await asyncio.wait(senders, timeout=cfg.drain_timeout)
                self.unacked = len(pending)
            await self._wait_delivered(deadline)
            if sampler is not None:
                sampler.cancel()
            self.cpu_s = time.process_time() - bench_cpu0
            cpu_after = await server_cpu(cfg.metrics_url, cfg.ca, cfg.server_pid)
            if cfg.cpu_pids:
                self.processes_cpu_s = tiercpu.spent(procs_before, tiercpu.read(cfg.cpu_pids))
                self.server_cpu_s = sum(self.processes_cpu_s.values())
            elif cpu_before is not None and cpu_after is not None:
                self.server_cpu_s = cpu_after - cpu_before
            await self._check_history()
            self.on_progress({**self.snapshot(0.0), "final": True})
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
            for task in [*senders, *receivers, *(t for t in (progress, sampler) if t)]:
                task.cancel()
            for task in [*senders, *receivers]:
                with contextlib.suppress(BaseException):
                    await task
            await self._close_all()
        return self.result()

    async def _close_all(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)

    def result(self) -> dict[str, Any]:
        verdict = self.checker.verdict()
        reconnects = sum(c.reconnects for c in self.clients)
        return {
            "pairs": len(self.pairs),
            "devices_per_user": max(1, self.cfg.devices),
            "offered_rate": self.cfg.rate,
            "duration_s": round(self.send_elapsed, 3),
            "sent": self.sent,
            "acked": self.acked,
            "send_errors": self.failed,
            "unsent": self.unsent,
            "unacked": self.unacked,
            "delivered": self.delivered,
            "echoed": self.echoed,
            "max_queue_delay_us": self.max_queue_delay_us,
            "reconnects": reconnects,
            "duplicate_entries": sum(c.duplicate_entries for c in self.clients),
            # the lean client's sync pulls after a gap or a SyncHint (the SDK's are its own)
            "synced_entries": sum(getattr(c, "synced", 0) for c in self.clients),
            "cuts": self.cuts,
            "history_pages": self.history_pages,
            "history_failed": self.history_failed,
            "bench_cpu_s": round(self.cpu_s, 3),
            "server_cpu_s": None if self.server_cpu_s is None else round(self.server_cpu_s, 3),
            "processes_cpu_s": self.processes_cpu_s,
            "bench_loop_lag": self.loop_lag.to_dict(),
            "errors": self.errors,
            "replication_lag": self.lag_summary(),
            "latency": self.hist.to_dict(),
            "ack_latency": self.ack_hist.to_dict(),
            "verdict": verdict.to_dict(),
            "verdict_summary": verdict.summary(),
        }
