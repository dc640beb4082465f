"""Who may open a connection, and how long a connection may take to say who
it is: the gateway's connection caps and the HTTP header timeout.

`Admission` counts open client sockets in total and per source address over
both listeners (HTTP/WebSocket and raw TCP) and refuses past its caps: an
HTTP connection gets `503` with a JSON error, a TCP one an `Error` frame
TOO_MANY_CONNECTIONS, and both are closed. Nothing is read from a refused
socket, so refusing costs one write.

`GuardedHttp` sits between asyncio and aiohttp's request handler: it asks
`Admission` at accept, and closes a socket whose first request head is not
complete within the header timeout (a silent socket, or one that drips its
headers a byte at a time). aiohttp's own keep-alive timer, set to the same
bound, closes a connection that idles between requests; a WebSocket, once
upgraded, is the session's business (login deadline, heartbeats).

aiohttp sees the socket through a `HandlerTransport`, so that the gateway
can take it back: `GuardedHttp.hand_over` (called by the `/ws` route once
the upgrade is accepted) writes the 101, gives the socket to the gateway's
own WebSocket protocol and tells aiohttp's handler the connection is gone.
The handler, its parser, the request and both of its tasks are then
garbage; the socket stays open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import resource
import ssl
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from chatplane.protocol.errors import ErrorCode
from chatplane.settings import Abuse

# File descriptors kept for everything but client sockets (storage, gRPC,
# Redis, logs) when the total cap is derived from the open-file limit.
FD_RESERVE = 256


def derived_max_connections(abuse: Abuse) -> int:
    """abuse.max_connections, or (0) the open-file limit less a reserve."""
    if abuse.max_connections:
        return abuse.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(64, soft - FD_RESERVE)


# accepts waiting for the loop: a reconnect storm (a drained gateway's clients, a
# region failing over) arrives in bursts; asyncio's default of 100 would make the
# kernel drop the handshakes past it (clients then see a connection the server
# never accepted)
LISTEN_BACKLOG = 1024


class Admission:
    """Open client sockets, in total and per source address."""

    def __init__(self, max_total: int, max_per_ip: int, exempt: str = "") -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.exempt = [ipaddress.ip_network(n.strip()) for n in exempt.split(",") if n.strip()]
        self._exempt_ips: dict[str, bool] = {}
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self.refused = 0  # sockets refused at accept (a counter for /metrics)
        self.timed_out = 0  # HTTP sockets closed by the header timeout

    @classmethod
    def configured(cls, abuse: Abuse) -> Admission:
        return cls(derived_max_connections(abuse), abuse.max_connections_per_ip,
                   abuse.per_ip_exempt)

    def _is_exempt(self, ip: str) -> bool:
        known = self._exempt_ips.get(ip)
        if known is None:
            try:
                address = ipaddress.ip_address(ip)
                known = any(address in network for network in self.exempt)
            except ValueError:
                known = False
            if len(self._exempt_ips) > 10_000:
                self._exempt_ips.clear()
            self._exempt_ips[ip] = known
        return known

    def admit(self, ip: str) -> str:
        """'' when the socket may stay (and is counted: call `release`), else
        why it may not."""
        if self.total >= self.max_total:
            self.refused += 1
            return f"the gateway holds its maximum of {self.max_total} connections; retry later"
        held = self.by_ip.get(ip, 0)
        if held >= self.max_per_ip and not self._is_exempt(ip):
            self.refused += 1
            return (f"{ip} holds the maximum of {self.max_per_ip} connections per address;"
                    " retry later")
        self.total += 1
        self.by_ip[ip] = held + 1
        return ""

    def release(self, ip: str) -> None:
        self.total -= 1
        held = self.by_ip.get(ip, 0) - 1
        if held > 0:
            self.by_ip[ip] = held
        else:
            self.by_ip.pop(ip, None)


def peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")


def refusal_response(reason: str) -> bytes:
    """The whole HTTP answer to a socket over a cap."""
    body = json.dumps({"error": ErrorCode.TOO_MANY_CONNECTIONS.name,
                       "code": int(ErrorCode.TOO_MANY_CONNECTIONS), "message": reason,
                       "retriable": True}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class HandlerTransport:
    """The socket as aiohttp's handler sees it: the real transport, until the
    socket is handed over; then closed, as far as aiohttp can tell (it may
    neither write to nor close a socket that is no longer its own)."""

    __slots__ = ("guard", "real")

    def __init__(self, real: asyncio.Transport, guard: GuardedHttp) -> None:
        self.real: asyncio.Transport | None = real
        self.guard = guard

    def __getattr__(self, name: str) -> Any:
        # everything else a transport has (get_extra_info, pause_reading, ...)
        if self.real is None:
            raise ConnectionResetError("the socket was handed over")
        return getattr(self.real, name)

    def is_closing(self) -> bool:
        return self.real is None or self.real.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.real is not None:
            self.real.write(data)

    def writelines(self, lines: Any) -> None:
        if self.real is not None:
            self.real.writelines(lines)

    def close(self) -> None:
        if self.real is not None:
            self.real.close()

    def abort(self) -> None:
        if self.real is not None:
            self.real.abort()


class GuardedHttp(asyncio.Protocol):
    """aiohttp's request handler behind the caps and the header timeout."""

    def __init__(self, handler: Any, admission: Admission, header_timeout_s: float) -> None:
        self.handler = handler  # aiohttp's RequestHandler (an asyncio protocol)
        self.admission = admission
        self.header_timeout_s = header_timeout_s
        self.ip = ""
        self.admitted = False
        self.transport: asyncio.Transport | None = None
        self._lent: HandlerTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ip = peer_ip(transport)
        reason = self.admission.admit(self.ip)
        if reason:
            self.transport.write(refusal_response(reason))
            self.transport.close()
            return
        self.admitted = True
        self._timer = asyncio.get_running_loop().call_later(self.header_timeout_s,
                                                            self._header_deadline)
        self._lent = HandlerTransport(self.transport, self)
        self.handler.connection_made(self._lent)

    def hand_over(self, answer: bytes, take: Callable[[str], asyncio.Protocol]) -> None:
        """Write `answer` (the 101), then give the socket to `take(ip)`'s
        protocol, which owns the admission count of `ip` from now on (it
        calls `Admission.release`); aiohttp's handler is told the connection
        is lost and lets go of everything it held for it. Bytes a client
        sent before the answer (RFC 6455 forbids it) go with aiohttp."""
        transport, lent = self.transport, self._lent
        if transport is None or lent is None or not self.admitted or transport.is_closing():
            raise ConnectionResetError("the socket is closed")
        lent.real = None
        self.admitted, self.transport, self._lent = False, None, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport.write(answer)
        protocol = take(self.ip)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if not transport.is_reading():  # aiohttp may have paused it (bytes sent before the 101)
            transport.resume_reading()
        handler, self.handler = self.handler, None
        handler.connection_lost(None)

    def _header_deadline(self) -> None:
        self._timer = None
        # aiohttp counts a request once its head is parsed
        if self.transport is not None and not getattr(self.handler, "_request_count", 1):
            self.admission.timed_out += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return cast(bool | None, self.handler.eof_received()) if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.admitted:
            self.admitted = False
            self.admission.release(self.ip)
            self.handler.connection_lost(exc)


async def start_public_http(app: web.Application, host: str, port: int, admission: Admission,
                            abuse: Abuse, ssl_context: ssl.SSLContext | None = None,
                            ) -> tuple[web.AppRunner, asyncio.Server, int]:
    """The client-facing HTTP port: aiohttp behind `GuardedHttp` (HTTPS with
    `ssl_context`, whose handshake gets the header timeout too). Close the
    returned server before cleaning up the runner."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=abuse.header_timeout_s)
    await runner.setup()
    factory: Callable[[], Any] = runner.server  # type: ignore[assignment]
    server = await asyncio.get_running_loop().create_server(
        lambda: GuardedHttp(factory(), admission, abuse.header_timeout_s), host, port,
        backlog=LISTEN_BACKLOG, ssl=ssl_context,
        ssl_handshake_timeout=abuse.header_timeout_s if ssl_context is not None else None)
    return runner, server, int(server.sockets[0].getsockname()[1])
