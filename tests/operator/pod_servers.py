"""Stand-ins for data-plane pods' HTTP ports, for the operator's reads of them.

`AnsweringPod` answers GETs with a fixed JSON body per path and counts what it was asked;
`HangingPod` is a real socket that accepts connections and never answers, and notes when
the client gives up (closes). Both are real TCP servers on a loopback address, so a pod
whose `podIP` is that address is read exactly as in a cluster. `shared_port` finds a port
free on several loopback addresses (pods of a cluster all use its one HTTP port).
"""

from __future__ import annotations

import collections
import http.server
import json
import socket
import threading
from typing import Any


def shared_port(hosts: list[str]) -> int:
    """A port that is free on every host of `hosts` now."""
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


class AnsweringPod:
    def __init__(self, host: str, port: int, answers: dict[str, Any]) -> None:
        self.requests: collections.Counter[str] = collections.Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests[self.path] += 1
                known = self.path in answers
                data = json.dumps(answers.get(self.path, {})).encode()
                self.send_response(200 if known else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class OpenConnections:
    """How many connections to some hanging pods are open now, and at most at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def opened(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def closed(self) -> None:
        with self.lock:
            self.now -= 1


class HangingPod:
    """Accepts, reads what the client sends, never answers."""

    def __init__(self, host: str, port: int, shared: OpenConnections | None = None) -> None:
        self.accepted = 0
        self.closed_by_client = 0
        self.open = shared if shared is not None else OpenConnections()
        self._lock = threading.Lock()
        self.listener = socket.create_server((host, port))
        self.port = int(self.listener.getsockname()[1])
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            self.open.opened()
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            while conn.recv(4096):
                pass  # the request: read, never answered
        except OSError:
            return
        with self._lock:
            self.closed_by_client += 1
        self.open.closed()

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for conn in self._conns:
                conn.close()
