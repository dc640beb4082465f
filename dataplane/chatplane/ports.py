"""Free loopback ports for the processes that `cluster up`, the benches that start
their own regions and the tests run on one machine."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_handed_out: set[int] = set()
# Ports handed out come from below the kernel's ephemeral range: an outgoing connection
# takes its local port from that range, and could take one handed out here before the
# server it is meant for binds it ("address already in use" at start). Above 15000 (out
# of the way of fixed service ports) and below 30000 (Kubernetes' NodePort range).
PORTS_LOW, PORTS_HIGH = 15000, 30000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on now, never the same one twice here."""
    high = min(PORTS_HIGH, _ephemeral_low())
    for _ in range(1000):
        port = random.randrange(PORTS_LOW, high)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {PORTS_LOW}..{high}")


def free_port_pair() -> int:
    """A free port P whose P + 1 is free too: a member's HTTP and admin ports,
    laid out as `chatplane up`'s (admin = HTTP + 1), which the benches assume."""
    while True:
        port = free_port()
        if port + 1 not in _handed_out and _bindable(port + 1):
            _handed_out.add(port + 1)
            return port
