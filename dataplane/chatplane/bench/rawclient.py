"""A lean protocol client for connection-count workloads (W3, storms).

The SDK keeps a session, tasks and queues per client; ten thousand of them
measure the load generator, not the server. A `RawClient` is one asyncio
Protocol on raw TCP: dispatch, connect, Login with its inbox cursor, then it
answers pushes with acks, heartbeats when asked by `heartbeat()`, and on a
`Reconnect` frame or a lost connection goes through dispatch again (with the
server's delay plus jitter, or a jittered backoff). `resumed` is set at each
LoginAck; `logins` counts them. A `tcps://` endpoint is reached over TLS with the
dispatcher's `ssl` context. `WsRawClient` is the same over WebSocket (W3 with
`--transport ws`), on aiohttp's client: heavier on the generator's side, the
same on the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl as ssl_
import time
import urllib.parse
from collections import Counter
from collections.abc import Coroutine
from typing import Any, cast

import aiohttp

from chatplane.protocol import frames
from chatplane.v1 import frames_pb2 as pb


class Dispatcher:
    """One shared HTTP session for every client's dispatch call."""

    def __init__(self, url: str, ssl: ssl_.SSLContext | None = None) -> None:
        self.url = url.rstrip("/")
        self.ssl = ssl
        self.http: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self.http

    async def endpoints(self, uid: str, kind: str = "tcp",
                        http: aiohttp.ClientSession | None = None) -> list[dict[str, str]]:
        """The gateways dispatch ranks for `uid` that offer a `kind` ("tcp"
        or "ws") address (asked on `http`, default the shared session)."""
        query = urllib.parse.urlencode({"uid": uid})
        async with (http or self.session()).get(
            f"{self.url}/v1/dispatch?{query}", timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            body = json.loads(await response.text())
        return [e for e in body.get("endpoints", []) if e.get(kind)]

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


class RawClient(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher, user: str, token: str) -> None:
        self.dispatcher = dispatcher
        self.user = user
        self.token = token
        self.inbox_seq = 0
        self.logins = 0
        self.synced = 0  # inbox entries pulled after a SyncHint (a push lost on the way)
        # why each connection ended: "reconnect: <reason>", "error: <code>", or "lost"
        # (closed without a word: the server's sweep, a dead pod, the network)
        self.ends: Counter[str] = Counter()
        self._told = ""
        self._syncing = False
        self.gateway = ""
        self.resumed = asyncio.Event()
        self.connect_ms = 0.0
        self.closed = False
        self._reader = frames.FrameReader()
        self._transport: asyncio.Transport | None = None
        self._lost = asyncio.Event()
        self._delay_ms: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._login_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        attempt = 0
        while not self.closed:
            began = time.monotonic()
            try:
                await self._connect()
                attempt = 0
                self.connect_ms = (time.monotonic() - began) * 1000
                await self._lost.wait()
            except (OSError, TimeoutError, aiohttp.ClientError, ValueError, LookupError):
                pass
            self.resumed.clear()
            if self.closed:
                return
            if self._delay_ms is not None:
                delay, self._delay_ms = self._delay_ms / 1000 * (1 + random.random()), None
            else:
                attempt += 1
                delay = random.uniform(0, min(2.0, 0.1 * 2 ** min(attempt, 6)))
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        endpoints = await self.dispatcher.endpoints(self.user)
        if not endpoints:
            raise LookupError("no gateway")
        endpoint = endpoints[0]
        address = endpoint["tcp"]
        tls = address.startswith("tcps://")
        if tls and self.dispatcher.ssl is None:
            raise LookupError(f"{address}: TLS endpoint, and the dispatcher has no ssl context")
        host, _, port = address.removeprefix("tcps://").rpartition(":")
        self._lost.clear()
        self._reader = frames.FrameReader()
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(
            lambda: self, host, int(port), ssl=self.dispatcher.ssl if tls else None), 10)
        self.gateway = endpoint.get("gateway_id", "")
        self._send(
            pb.Frame(id=1, login=pb.Login(protocol_version=1, token=self.token, inbox_seq=self.inbox_seq))
        )
        # a refused login (a draining gateway) closes the connection: back off from then,
        # not after the whole login timeout
        waits = [asyncio.ensure_future(self.resumed.wait()), asyncio.ensure_future(self._lost.wait())]
        try:
            await asyncio.wait(waits, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if not self.resumed.is_set():
            raise ConnectionError("login refused or timed out")

    def _send(self, frame: pb.Frame) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frames.encode_prefixed(frame))

    async def logged_in_more_than(self, count: int) -> None:
        """Return once this client has logged in more than `count` times."""
        if self.logins > count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._login_waiters.append((count, future))
        await future

    def heartbeat(self) -> None:
        self._send(pb.Frame(heartbeat=pb.Heartbeat(client_time_ms=int(time.time() * 1000))))

    def drop(self) -> None:
        """Cut the connection (as a network failure would); it resumes by itself."""
        self._told = self._told or "dropped here"
        if self._transport is not None:
            self._transport.abort()

    async def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
        self._lost.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._reader.feed_data(data)
        except Exception:
            self.drop()
            return
        for payload in payloads:
            self._on_payload(payload)

    def _on_payload(self, payload: bytes) -> None:
        frame = pb.Frame.FromString(payload)
        kind = frame.WhichOneof("body")
        if kind == "login_ack":
            self.inbox_seq = max(self.inbox_seq, frame.login_ack.inbox_head)
            self.logins += 1
            self.resumed.set()
            waiting, self._login_waiters = self._login_waiters, []
            for count, future in waiting:
                if self.logins > count:
                    if not future.done():
                        future.set_result(None)
                else:
                    self._login_waiters.append((count, future))
        elif kind == "push" and frame.push.entries:
            self.inbox_seq = max(self.inbox_seq, frame.push.entries[-1].inbox_seq)
            self._send(pb.Frame(push_ack=pb.PushAck(inbox_seq=self.inbox_seq)))
        elif kind == "sync_hint" and frame.sync_hint.inbox_head > self.inbox_seq:
            # Pushes are best effort between the tiers; the gateway's head check tells a
            # device what it missed, and the device pulls it (as the SDK does).
            self._sync()
        elif kind == "sync_response":
            self._syncing = False
            entries = frame.sync_response.entries
            if entries:
                self.synced += len(entries)
                self.inbox_seq = max(self.inbox_seq, entries[-1].inbox_seq)
            if frame.sync_response.has_more:
                self._sync()
        elif kind == "reconnect":
            self._delay_ms = frame.reconnect.delay_ms
            self._told = f"reconnect: {frame.reconnect.reason}"
            self.drop()
        elif kind == "error" and frame.error.fatal:
            self._told = f"error: {frame.error.code}"
            self.drop()

    def _sync(self) -> None:
        if not self._syncing:
            self._syncing = True
            self._send(pb.Frame(id=2, sync=pb.SyncRequest(after_inbox_seq=self.inbox_seq,
                                                            limit=256)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.ends[self._told or "lost"] += 1
        self._told = ""
        self._transport = None
        self._syncing = False
        self._lost.set()


class WsRawClient(RawClient):
    """The same lean client over WebSocket: aiohttp's client on a session of
    its own, like the SDK, so the upgrade may reuse the connection its
    dispatch call was made on."""

    def __init__(self, dispatcher: Dispatcher, user: str, token: str) -> None:
        super().__init__(dispatcher, user, token)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._sends: set[asyncio.Task[None]] = set()  # sends and closes under way

    async def _connect(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        endpoints = await self.dispatcher.endpoints(self.user, "ws", self._http)
        if not endpoints:
            raise LookupError("no gateway")
        endpoint = endpoints[0]
        self._lost.clear()
        ws = await asyncio.wait_for(self._http.ws_connect(
            endpoint["ws"], ssl=self.dispatcher.ssl or True, max_msg_size=0), 10)
        self._ws = ws
        self.gateway = endpoint.get("gateway_id", "")
        reading = asyncio.get_running_loop().create_task(self._read(ws))
        self._send(
            pb.Frame(id=1, login=pb.Login(protocol_version=1, token=self.token, inbox_seq=self.inbox_seq))
        )
        try:
            await asyncio.wait_for(self.resumed.wait(), 15)
        except BaseException:
            reading.cancel()
            raise

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._on_payload(msg.data)
        finally:
            self._ws = None
            self._lost.set()

    def _spawn(self, step: Coroutine[Any, Any, Any]) -> None:
        async def quietly() -> None:
            with contextlib.suppress(ConnectionError):  # the read loop sees the loss
                await step
        task = asyncio.get_running_loop().create_task(quietly())
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _send(self, frame: pb.Frame) -> None:
        if self._ws is not None and not self._ws.closed:
            self._spawn(self._ws.send_bytes(frames.encode(frame)))

    def drop(self) -> None:
        if self._ws is not None:
            self._spawn(self._ws.close())

    async def close(self) -> None:
        self.closed = True
        if self._ws is not None:
            await self._ws.close()
        self._lost.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
