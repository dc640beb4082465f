"""Redis and the CQL server as host processes that the node's pods reach.

They stay host processes (as in every other test) rather than pods: no second and third image
to build, the same servers the rest of the suite runs, and their logs and data on the host.
They listen on 127.0.0.1; `scripts/node/expose` DNATs 10.244.0.1:PORT (the node's address on
the pod bridge) to them. Two settings make that work: Redis without protected mode (it
refuses non-loopback clients otherwise, and the pods' source addresses are 10.244.0.x), and
Cassandra's broadcast_rpc_address 10.244.0.1 (the driver swaps the contact point for the
address the server advertises; 127.0.0.1 inside a pod is the pod itself).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.node.kube_node import NODE_IP, ROOT
from tests.services import free_port

CQL_START_TIMEOUT_S = 240.0


def _expose(*ports: int) -> None:
    subprocess.run([str(ROOT / "scripts" / "node" / "expose"), *map(str, ports)], check=True)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def host_redis(workdir: Path) -> Iterator[str]:
    """A redis-server; yields the URL the pods use."""
    port = free_port()
    log = open(workdir / "redis.log", "wb")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--protected-mode", "no", "--save", "", "--appendonly", "no"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _port_open(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.1)
        _expose(port)
        yield f"redis://{NODE_IP}:{port}/0"
    finally:
        _stop(proc)
        log.close()


@contextlib.contextmanager
def host_cql(workdir: Path) -> Iterator[str]:
    """One Cassandra node (scripts/cql/run-cassandra); yields the contact point the pods use."""
    port, storage_port = free_port(), free_port()
    log = open(workdir / "cassandra.out", "wb")
    env = {**os.environ, "CHATPLANE_CQL_BROADCAST_RPC": NODE_IP}
    proc = subprocess.Popen([str(ROOT / "scripts" / "cql" / "run-cassandra"),
                             str(workdir / "cql"), str(port), str(storage_port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _expose(port)
        deadline = time.monotonic() + CQL_START_TIMEOUT_S
        while not _port_open(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"Cassandra did not start; see {workdir / 'cassandra.out'}")
            time.sleep(0.5)
        yield f"{NODE_IP}:{port}"
    finally:
        _stop(proc)
        log.close()
