"""Issue 15, "Must hold": under traffic with TLS on, a kill -9 and restart loses
nothing acked, a token key rotation drops no session, and revoking one device
closes its session within 5 s while the user's other devices carry on.

Real `chatplane up --tls-cert --tls-key` processes, the real SDK verifying
against a test CA, WSS for some devices and TCP+TLS (tcps://) for others. Two
users with two devices each send continuously (pipelined) into their direct
chat; the delivery checker judges every device's receipts (own devices'
sends included)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatplane.auth import TokenSigner, parse_keys
from chatplane.checker import DeliveryChecker, DeviceVerdict
from chatplane.client import Client
from chatplane.client.client import ClientClosed, _Connection
from chatplane.protocol.errors import ErrorCode, RequestError
from tests.support.certs import TestCa
from tests.support.server import ServerProcess
from tests.support.traffic import Device

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

# (user, device, transport): each user has one WSS and one TCP+TLS device
DEVICES = [("alice", "phone", "ws"), ("alice", "laptop", "tcp"),
           ("bob", "phone", "tcp"), ("bob", "laptop", "ws")]
OLD, NEW = "old-key-" + "o" * 20, "new-key-" + "n" * 20


class TlsServer(ServerProcess):
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


class CountingClient(Client):
    """Counts every connection it opens (a login attempt), successful or not:
    1 over a whole run means no session was ever closed and reopened."""

    opens = 0

    async def _open(self) -> _Connection:
        self.opens += 1
        return await super()._open()


class Watched(Device):
    """A Device that notes when and how its session ended for good."""

    error: BaseException | None = None
    ended_at: float | None = None  # time.monotonic()

    async def _collect(self) -> None:
        try:
            await super()._collect()
        except RequestError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    @property
    def counting(self) -> CountingClient:
        assert isinstance(self.client, CountingClient)
        return self.client

    @property
    def name(self) -> str:
        return f"{self.user}/{self.device}"


class Traffic:
    """Each device sends into `conversation` continuously: a new send every
    `period_s`, at most `in_flight` unacked at a time; every ack goes to the
    checker. Errors are collected per device, never raised."""

    def __init__(self, conversation: str, period_s: float = 0.04, in_flight: int = 8) -> None:
        self.conversation = conversation
        self.period_s = period_s  # 25 sends/s a device: 50/s a user, under the per-user limit
        self.in_flight = in_flight
        self.acked: dict[str, int] = {}
        self.errors: dict[str, list[BaseException]] = {}
        self.seqs: list[int] = []  # every acked seq (resends' duplicate acks included)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, device: Watched) -> None:
        self.acked[device.name] = 0
        self.errors[device.name] = []
        self._tasks.append(asyncio.get_running_loop().create_task(self._run(device)))

    def total(self) -> int:
        return sum(self.acked.values())

    async def _run(self, d: Watched) -> None:
        semaphore = asyncio.Semaphore(self.in_flight)
        sends: set[asyncio.Task[None]] = set()
        i = 0
        while not self._stop.is_set() and d.error is None and not self.errors[d.name]:
            await semaphore.acquire()
            i += 1
            task = asyncio.get_running_loop().create_task(self._one(d, i, semaphore))
            sends.add(task)
            task.add_done_callback(sends.discard)
            await asyncio.sleep(self.period_s)
        if sends:
            await asyncio.gather(*sends)

    async def _one(self, d: Watched, i: int, semaphore: asyncio.Semaphore) -> None:
        try:
            ack = await d.client.send_text(self.conversation, f"{d.name}-{i}")
        except (RequestError, ClientClosed) as exc:
            self.errors[d.name].append(exc)
        else:
            d.checker.record_ack(d.user, d.device, ack.conversation_id, ack.seq, ack.message_id)
            self.acked[d.name] += 1
            self.seqs.append(ack.seq)
        finally:
            semaphore.release()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """No new sends; wait for every send made to be answered."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout_s)


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "pki")


def tls_server(tmp_path: Path, ca: TestCa, env: dict[str, str] | None = None) -> TlsServer:
    pair = ca.web()
    server = TlsServer(tmp_path / "data", env=env, extra_args=[
        "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)])
    server.start()
    return server


@pytest.fixture
def server(tmp_path: Path, ca: TestCa) -> Iterator[TlsServer]:
    proc = tls_server(tmp_path, ca)
    yield proc
    proc.stop()


async def open_device(server: TlsServer, ca: TestCa, checker: DeliveryChecker, token: str,
                      user: str, device: str, transport: str) -> Watched:
    client = CountingClient(server.url, token, transport=transport, ca=str(ca.path),
                            backoff_max_s=1.0)
    await client.connect(timeout_s=15)
    d = Watched(client, user, device, checker)
    d.start()
    return d


async def open_all(server: TlsServer, ca: TestCa, checker: DeliveryChecker,
                   signer: TokenSigner) -> tuple[list[Watched], str]:
    devices = [await open_device(server, ca, checker, signer.mint(u, d), u, d, t)
               for u, d, t in DEVICES]
    conversation = await devices[0].client.direct("bob")
    assert conversation == await devices[2].client.direct("alice")
    checker.add_member(conversation, "alice")
    checker.add_member(conversation, "bob")
    return devices, conversation


async def wait_for(what: str, condition: Any, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def settle(devices: list[Watched], traffic: Traffic, timeout_s: float = 20.0) -> None:
    """Until every device holds every acked seq, then a little longer (a
    duplicate would arrive now)."""
    acked = set(traffic.seqs)

    def missing(d: Watched) -> int:
        return len(acked - {m.seq for m in d.received if m.conversation_id == traffic.conversation})

    try:
        await wait_for("every acked message on every device",
                       lambda: all(missing(d) == 0 for d in devices), timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: missing " + ", ".join(
            f"{d.name}={missing(d)}" for d in devices)) from None
    await asyncio.sleep(0.5)


def failed(devices: list[DeviceVerdict]) -> str:
    return "; ".join(f"{d.user}/{d.device}: {d}" for d in devices if not d.ok)


async def close_all(devices: list[Watched]) -> None:
    for d in devices:
        with contextlib.suppress(Exception):
            await d.stop()


async def test_kill_9_mid_traffic_over_tls_loses_nothing_acked(
        server: TlsServer, ca: TestCa) -> None:
    checker = DeliveryChecker()
    devices, conversation = await open_all(server, ca, checker,
                                           TokenSigner.from_data_dir(server.data_dir))
    traffic = Traffic(conversation)

    def in_flight() -> int:  # sends made, not acked yet
        return sum(len(d.client._pending) for d in devices)

    try:
        for d in devices:
            traffic.add(d)
        await wait_for("traffic before the kill",
                       lambda: traffic.total() >= 120 and in_flight() >= 2, 20)
        pending = in_flight()
        server.kill()  # kill -9, with sends in flight
        before = traffic.total()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)  # same data dir, same ports
        await wait_for("every client back by itself",
                       lambda: all(d.client.reconnects >= 1 for d in devices), 20)
        await wait_for("traffic after the restart", lambda: traffic.total() >= before + 120, 20)
        await traffic.stop()
        assert not any(traffic.errors.values()), traffic.errors
        await settle(devices, traffic)

        # the per-conversation sequence neither repeats nor skips across the kill
        assert sorted(set(traffic.seqs)) == list(range(1, max(traffic.seqs) + 1))
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary() + " " + failed(verdict.devices)
        assert verdict.acked == max(traffic.seqs) and verdict.received == 4 * verdict.acked
        # and the stored history says the same
        reader = devices[3]
        after = 0
        while True:
            page = await reader.client.history(conversation, after_seq=after, limit=200)
            if not page:
                break
            assert checker.check_history(reader.user, reader.device, conversation,
                                         [(m.seq, m.message_id) for m in page]) == 0
            after = page[-1].seq
        assert after == verdict.acked
        print(f"kill -9 over TLS with {pending} sends in flight: {verdict.summary()}; reconnects "
              + ", ".join(f"{d.name}={d.client.reconnects}" for d in devices))
    finally:
        await close_all(devices)


def rewrite(keys: Path, text: str, mtime: float) -> None:
    keys.write_text(text)
    os.utime(keys, (mtime, mtime))


async def _reload_keys(server: TlsServer, keys: Path, text: str, http: aiohttp.ClientSession,
                       auth: dict[str, str]) -> str:
    """Rewrite the keys file (a new mtime even within one clock tick), then mint
    through the admin API until the server has reloaded it; returns the last
    token minted."""
    reloads = sum("token keys reloaded" in line for line in server.output)
    rewrite(keys, text, time.time() + 2 * reloads + 5)
    deadline = time.monotonic() + 15
    while True:
        # the server looks at the file at most once a second, when it needs its keys
        async with http.post("/v1/admin/tokens", json={"user_id": "probe"}, headers=auth) as r:
            assert r.status == 200, await r.text()
            token = str((await r.json())["token"])
        if sum("token keys reloaded" in line for line in server.output) > reloads:
            return token
        assert time.monotonic() < deadline, "the keys file was not reloaded"
        await asyncio.sleep(0.3)


async def test_a_key_rotation_under_tls_traffic_drops_no_session(
        tmp_path: Path, ca: TestCa) -> None:
    keys = tmp_path / "token-keys"
    keys.write_text(f"k1:{OLD}\n")
    server = tls_server(tmp_path, ca, env={"CHATPLANE_TOKEN_KEYS_FILE": str(keys)})
    k1 = TokenSigner(keys=parse_keys(f"k1:{OLD}"))
    k2 = TokenSigner(keys=parse_keys(f"k2:{NEW}"))
    auth = {"Authorization": f"Bearer {server.admin_secret}"}
    checker = DeliveryChecker()
    devices: list[Watched] = []
    try:
        devices, conversation = await open_all(server, ca, checker, k1)
        traffic = Traffic(conversation)
        for d in devices:
            traffic.add(d)
        await wait_for("traffic before the rotation", lambda: traffic.total() >= 80, 20)
        async with aiohttp.ClientSession(server.admin_url) as http:
            # 1. the new key is added second: it verifies, the old one still signs
            token = await _reload_keys(server, keys, f"k1:{OLD}\nk2:{NEW}\n", http, auth)
            assert k1.verify(token).kid == "k1"
            tablet = await open_device(server, ca, checker, k2.mint("alice", "tablet"),
                                       "alice", "tablet", "ws")
            devices.append(tablet)
            traffic.add(tablet)
            # 2. then first: it signs, tokens of the old one still verify
            token = await _reload_keys(server, keys, f"k2:{NEW}\nk1:{OLD}\n", http, auth)
            assert k2.verify(token).kid == "k2"
            async with http.post("/v1/admin/tokens", json={"user_id": "bob", "device_id": "tablet"},
                                 headers=auth) as r:
                token = str((await r.json())["token"])
            assert k2.verify(token).kid == "k2"
            bob_tablet = await open_device(server, ca, checker, token, "bob", "tablet", "tcp")
            devices.append(bob_tablet)
            traffic.add(bob_tablet)
            # overlap: a login with an old-key token still works
            late = Client(server.url, k1.mint("carol", "phone"), transport="tcp", ca=str(ca.path))
            await late.connect(timeout_s=15)
            began = time.monotonic()
            await late.close()  # right after its login: not held for request_timeout_s
            assert time.monotonic() - began < 5.0
        mark = traffic.total()
        await wait_for("traffic after the rotation", lambda: traffic.total() >= mark + 120, 20)
        await traffic.stop()
        assert not any(traffic.errors.values()), traffic.errors
        await settle(devices, traffic)

        # no session was closed: one connection per client, all through the rotation
        assert {d.name: (d.counting.opens, d.client.reconnects, d.error) for d in devices} == {
            d.name: (1, 0, None) for d in devices}
        assert all(traffic.acked[d.name] > 0 for d in devices), traffic.acked
        verdict = checker.verdict()
        assert verdict.ok, verdict.summary() + " " + failed(verdict.devices)
        assert sorted(set(traffic.seqs)) == list(range(1, max(traffic.seqs) + 1))
        print(f"key rotation over TLS: {verdict.summary()}")
    finally:
        await close_all(devices)
        server.stop()


def revoke_by_cli(server: TlsServer, user: str, device: str) -> None:
    done = subprocess.run([sys.executable, "-m", "chatplane.cli", "token", "revoke",
                           "--url", server.admin_url, "--user", user, "--device", device,
                           "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("via", ["admin-api", "cli"])
async def test_revoking_one_device_under_tls_traffic(server: TlsServer, ca: TestCa,
                                                     via: str) -> None:
    checker = DeliveryChecker()
    signer = TokenSigner.from_data_dir(server.data_dir)
    devices, conversation = await open_all(server, ca, checker, signer)
    phone, others = devices[0], devices[1:]
    traffic = Traffic(conversation)
    try:
        for d in devices:
            traffic.add(d)
        await wait_for("traffic before the revocation", lambda: traffic.total() >= 120, 20)
        began = time.monotonic()
        if via == "cli":
            await asyncio.to_thread(revoke_by_cli, server, "alice", "phone")
        else:
            async with aiohttp.ClientSession(server.admin_url) as http, http.post(
                    "/v1/admin/revocations", json={"user_id": "alice", "device_id": "phone"},
                    headers={"Authorization": f"Bearer {server.admin_secret}"}) as r:
                assert r.status == 200, await r.text()
        returned = time.monotonic()
        mark = {d.name: traffic.acked[d.name] for d in others}
        await wait_for("the revoked session to end", lambda: phone.ended_at is not None, 10)
        assert phone.ended_at is not None
        took = phone.ended_at - returned
        assert isinstance(phone.error, RequestError), phone.error
        assert phone.error.code == ErrorCode.TOKEN_REVOKED, phone.error
        assert took <= 5.0, f"closed {took:.3f} s after the revocation returned"
        # the others carry on; the SDK does not retry the revoked device
        await wait_for("the others' traffic after the revocation",
                       lambda: all(traffic.acked[d.name] >= mark[d.name] + 40 for d in others), 20)
        await traffic.stop()
        assert phone.counting.opens == 1 and phone.client.reconnects == 0
        # its sends in flight failed with the revocation (or, made after it, as closed)
        assert all(isinstance(e, ClientClosed) or (isinstance(e, RequestError)
                                                   and e.code == ErrorCode.TOKEN_REVOKED)
                   for e in traffic.errors[phone.name]), traffic.errors[phone.name]
        assert not any(traffic.errors[d.name] for d in others), traffic.errors
        assert all((d.counting.opens, d.client.reconnects, d.error) == (1, 0, None)
                   for d in others)
        await settle(others, traffic)

        verdict = checker.verdict()
        by_name = {f"{v.user}/{v.device}": v for v in verdict.devices}
        assert all(by_name[d.name].ok for d in others), failed(verdict.devices)
        assert verdict.same_order, verdict.summary()
        # the revoked phone got a clean prefix: all it lacks is what came after its close
        got = by_name[phone.name]
        last = max((m.seq for m in phone.received), default=0)
        after = sum(1 for seq in set(traffic.seqs) if seq > last)
        assert (got.duplicated, got.reordered, got.gaps, got.conflicting, got.foreign,
                got.lost) == (0, 0, 0, 0, 0, after), got
        # its token stays refused at login (not retried), a fresh one gets in
        again = Client(server.url, phone.client.token, transport="tcp", ca=str(ca.path))
        with pytest.raises(RequestError) as refused:
            await again.connect(timeout_s=10)
        assert refused.value.code == ErrorCode.TOKEN_REVOKED
        survivors = sum(by_name[d.name].received for d in others)
        print(f"revoked ({via}): session closed {(phone.ended_at - began) * 1000:.0f} ms after "
              f"the revocation call began, {took * 1000:+.0f} ms from its return "
              f"(negative: before the answer arrived); survivors clean: {survivors} receipts "
              f"of {verdict.acked} acked on {len(others)} devices")
    finally:
        await close_all(devices)
