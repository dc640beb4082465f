"""Real backing services for tests: a redis-server, a CQL server (Cassandra) and
an S3-compatible server (S3Proxy).

A pytest plugin (tests/conftest.py loads it with `pytest_plugins`). Two
session-scoped fixtures start the real servers on 127.0.0.1, on free ports,
with their data in a temporary folder, and stop them at the end:

- `redis_server` -> RedisService (`.url`; `.restart_empty()` loses everything,
  as a crashed Redis without persistence does);
- `cql_server` -> CqlService (`.hosts`, `.port`; `.stop()` / `.start()` keep
  the data, for storage-fault tests);
- `s3_server` -> S3Service (`.endpoint`, `.bucket`, `.access_key`,
  `.secret_key`): S3Proxy on its filesystem backend, fetched by
  scripts/setup/50-s3proxy.sh, one bucket made, signatures checked.

Environment variables point them at external servers instead (nothing is
started then): CHATPLANE_TEST_REDIS_URL=redis://host:port/db and
CHATPLANE_TEST_CQL_HOSTS=host[:port][,host...]. Tests that use them are marked
`@pytest.mark.redis` / `@pytest.mark.cql` / `@pytest.mark.s3`. Every wait here
is bounded.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from chatplane.cluster import free_port
from chatplane.storage.archive_s3 import S3Segments
from chatplane.supervision import watched

ROOT = Path(__file__).resolve().parent.parent
RUN_CASSANDRA = ROOT / "scripts" / "cql" / "run-cassandra"
REDIS_START_TIMEOUT_S = 15.0
CQL_START_TIMEOUT_S = float(os.environ.get("CHATPLANE_TEST_CQL_START_TIMEOUT", "180"))
STOP_TIMEOUT_S = 30.0
S3_START_TIMEOUT_S = 60.0
S3PROXY = Path(os.environ.get("CHATPLANE_CACHE", Path.home() / ".cache" / "chatplane")) / \
    "s3proxy" / "s3proxy.jar"

_running: set[subprocess.Popen[bytes]] = set()


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, SIGKILL it after timeout_s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass
    _running.discard(proc)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_running):
        _stop_process(proc, timeout_s=5.0)


# The server is exec'd by a shell that leaves a watchdog behind: when this
# test process is gone (pytest killed with -9, or CI cancelled), atexit never
# runs, so the watchdog kills the server (a JVM left running would hold 1 GB
# and a core for the next run). It polls every 2 s and exits with the server.
def _spawn(args: list[str], log: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            watched(args),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **env} if env else None,
        )
    _running.add(proc)
    return proc


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RedisService:
    """A redis-server started here, or an external one (then never restarted)."""

    def __init__(self, workdir: Path | None, external_url: str | None = None) -> None:
        self.workdir = workdir
        self.external = external_url is not None
        self.port = free_port() if external_url is None else 0
        self.url = external_url or f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.external or self._proc is not None:
            return
        assert self.workdir is not None
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/setup/10-redis.sh")
        args = [
            binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
        ]
        self._proc = _spawn(args, self.workdir / "redis.log")
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"redis-server exited at start:\n{_tail(self.workdir / 'redis.log')}")
            if self._ping():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not answer PING within {REDIS_START_TIMEOUT_S}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None

    def restart_empty(self) -> None:
        """Lose every key, like a Redis restart without persistence. An external
        server is flushed instead (FLUSHALL) since it cannot be restarted here."""
        if self.external:
            import redis

            client = redis.Redis.from_url(self.url, socket_timeout=5.0)
            try:
                client.flushall()
            finally:
                client.close()
            return
        self.stop()
        self.start()


class CqlService:
    """A one-node Cassandra started here (scripts/cql/run-cassandra), or an
    external CQL cluster (ScyllaDB or Cassandra) that is never stopped."""

    def __init__(self, workdir: Path | None, external: str | None = None) -> None:
        self.workdir = workdir
        self.external = external is not None
        if external is not None:
            hosts, port = _parse_hosts(external)
            self.hosts, self.port, self.storage_port = hosts, port, 0
        else:
            self.hosts, self.port, self.storage_port = ("127.0.0.1",), free_port(), free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.last_start_s = 0.0

    @property
    def contact_points(self) -> list[str]:
        return [f"{host}:{self.port}" for host in self.hosts]

    @property
    def pid(self) -> int | None:
        """The node's process (the JVM: the launcher execs it), None if not running here."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self.external or self._proc is not None:
            if self.external:
                self._wait_cql(time.monotonic() + CQL_START_TIMEOUT_S)
            return
        assert self.workdir is not None
        began = time.monotonic()
        log = self.workdir / "run-cassandra.out"
        args = [str(RUN_CASSANDRA), str(self.workdir / "node"), str(self.port),
                str(self.storage_port)]
        self._proc = _spawn(args, log)
        self._wait_cql(began + CQL_START_TIMEOUT_S)
        self.last_start_s = time.monotonic() - began

    def _wait_cql(self, deadline: float) -> None:
        from cassandra.cluster import Cluster

        error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                self._proc = None
                assert self.workdir is not None
                pytest.fail(f"Cassandra exited at start:\n{_tail(self.workdir / 'run-cassandra.out')}")
            if self._port_open():
                cluster = Cluster(list(self.hosts), port=self.port, connect_timeout=5.0,
                                  control_connection_timeout=5.0)
                try:
                    session = cluster.connect()
                    session.execute("SELECT release_version FROM system.local", timeout=10.0)
                    return
                except Exception as exc:  # the server is still starting
                    error = exc
                finally:
                    cluster.shutdown()
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"no CQL answer from {self.contact_points} in time: {error}")

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((self.hosts[0], self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node (SIGTERM, then SIGKILL); its data stays for start()."""
        if self._proc is not None:
            _stop_process(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the node, as a crash would; its data stays for start()."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _stop_process(self._proc)
            self._proc = None


class TwoDatacenterCql:
    """Two Cassandra nodes of one cluster in two datacenters on loopback, `dc1` on
    127.0.0.1 and `dc2` on 127.0.0.2 (GossipingPropertyFileSnitch), both on one CQL
    port: a keyspace with a replica in each is what two regions share on CQL
    (docs/architecture.md, "Regions on CQL"). Started side by side (about 20 s on
    2 cores, about 1 GB of memory each); never the shared test node's ports or dirs."""

    DATACENTERS = (("dc1", "127.0.0.1"), ("dc2", "127.0.0.2"))

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port, self.storage_port = free_port(), free_port()
        self._procs: list[subprocess.Popen[bytes]] = []
        self.last_start_s = 0.0

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(address for _, address in self.DATACENTERS)

    def pid(self, dc: str) -> int:
        """The node's JVM (run-cassandra execs it)."""
        index = [name for name, _ in self.DATACENTERS].index(dc)
        return self._procs[index].pid

    def start(self) -> None:
        """dc1 first (the seed), dc2 once dc1 serves: the nodes run with ring_delay_ms=0,
        and a node seen in gossip before it holds tokens is dropped at once as a "fat
        client" (started side by side, each dropped the other and they never met)."""
        began = time.monotonic()
        deadline = began + CQL_START_TIMEOUT_S
        seed = f"{self.DATACENTERS[0][1]}:{self.storage_port}"
        try:
            for token, (dc, address) in enumerate(self.DATACENTERS):
                env = {"CHATPLANE_CQL_LISTEN": address, "CHATPLANE_CQL_DC": dc,
                       "CHATPLANE_CQL_SEEDS": seed, "CHATPLANE_CQL_TOKEN": str(token),
                       # dc2 waits for dc1's gossip answer on a loaded machine
                       "CHATPLANE_CQL_RING_DELAY_MS": "30000" if token else "0"}
                args = [str(RUN_CASSANDRA), str(self.workdir / dc), str(self.port),
                        str(self.storage_port)]
                self._procs.append(_spawn(args, self.workdir / f"{dc}.out", env))
                self._wait_peers(deadline, token)
        except BaseException:
            self.stop()
            raise
        self.last_start_s = time.monotonic() - began

    def _wait_peers(self, deadline: float, peers: int) -> None:
        """Until every node started answers CQL and lists `peers` other nodes."""
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        error: Exception | str | None = None
        while time.monotonic() < deadline:
            for (dc, _), proc in zip(self.DATACENTERS, self._procs, strict=False):
                if proc.poll() is not None:
                    pytest.fail(f"Cassandra {dc} exited at start:\n"
                                f"{_tail(self.workdir / f'{dc}.out')}")
            seen, error = [], None
            for _, address in self.DATACENTERS[:len(self._procs)]:
                only = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]))
                cluster = Cluster([address], port=self.port, connect_timeout=3.0,
                                  control_connection_timeout=3.0,
                                  execution_profiles={EXEC_PROFILE_DEFAULT: only})
                try:
                    rows = cluster.connect().execute("SELECT peer FROM system.peers_v2",
                                                     timeout=10.0)
                    seen.append(len(list(rows)))
                except Exception as exc:  # still starting
                    error = exc
                finally:
                    cluster.shutdown()
            if seen == [peers] * len(self._procs):
                return
            error = error or f"other nodes seen by each: {seen}"
            time.sleep(1.0)
        pytest.fail(f"no two-datacenter CQL cluster on {self.hosts} in time: {error}")

    def stop(self) -> None:
        for proc in self._procs:
            _stop_process(proc)
        self._procs.clear()


def _parse_hosts(value: str) -> tuple[tuple[str, ...], int]:
    hosts: list[str] = []
    port = 9042
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port_text = item.rpartition(":")
        if sep and port_text.isdigit():
            hosts.append(host)
            port = int(port_text)
        else:
            hosts.append(item)
    if not hosts:
        raise pytest.UsageError(f"CHATPLANE_TEST_CQL_HOSTS names no host: {value!r}")
    return tuple(hosts), port


class _Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


_Service = TypeVar("_Service", bound=_Server)


@contextlib.contextmanager
def _started(make: Callable[[Path], _Service], prefix: str) -> Iterator[_Service]:
    """A server with its data in a fresh temporary folder, stopped and removed after."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    service = make(workdir)
    service.start()
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisService]:
    external = os.environ.get("CHATPLANE_TEST_REDIS_URL")
    if external:
        yield RedisService(None, external_url=external)
        return
    with _started(RedisService, "chatplane-redis-") as service:
        yield service


class S3Service:
    """S3Proxy (a real S3-compatible server; here on its filesystem backend) on loopback,
    with one identity whose keys every request must be signed with (v2 or v4)."""

    bucket = "chatplane-test"
    access_key = "chatplane-test-key"
    secret_key = "chatplane-test-secret"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not S3PROXY.exists():
            pytest.fail(f"{S3PROXY} is missing: run scripts/setup/50-s3proxy.sh")
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        properties = self.workdir / "s3proxy.properties"
        properties.write_text("\n".join([
            f"s3proxy.endpoint={self.endpoint}",
            "s3proxy.authorization=aws-v2-or-v4",
            f"s3proxy.identity={self.access_key}",
            f"s3proxy.credential={self.secret_key}",
            "jclouds.provider=filesystem",
            f"jclouds.filesystem.basedir={data}", ""]))
        java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get(
            "JAVA_HOME") else "java"
        self._proc = _spawn([java, "-Xmx256m", "-jar", str(S3PROXY), "--properties",
                             str(properties)], self.workdir / "s3proxy.log")
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                pytest.fail(f"s3proxy exited at start:\n{_tail(self.workdir / 's3proxy.log')}")
            try:
                asyncio.run(self._make_bucket())
                return
            except Exception as exc:  # not up yet: refused while the JVM starts
                last = exc
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"S3Proxy did not answer within {S3_START_TIMEOUT_S}s: {last!r}\n"
                    f"{_tail(self.workdir / 's3proxy.log')}")

    def segments(self, prefix: str = "") -> S3Segments:
        return S3Segments(self.endpoint, self.bucket, access_key=self.access_key,
                          secret_key=self.secret_key, prefix=prefix)

    async def _make_bucket(self) -> None:
        store = self.segments()
        try:
            await store.create_bucket()
            await store.check()
        finally:
            await store.close()

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc, timeout_s=2.0)  # throwaway data: no need to wait long
            self._proc = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Service]:
    with _started(S3Service, "chatplane-s3-") as service:
        yield service


@pytest.fixture(scope="session")
def two_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoDatacenterCql]:
    """One pair of JVMs (two datacenters) for every module that needs it: they take
    30-180 s to start here. Each test makes a keyspace of its own; a test that freezes
    a node (SIGSTOP) thaws it before it ends."""
    cluster = TwoDatacenterCql(tmp_path_factory.mktemp("two-dc"))
    cluster.start()
    print(f"two datacenters up in {cluster.last_start_s:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cql_server() -> Iterator[CqlService]:
    external = os.environ.get("CHATPLANE_TEST_CQL_HOSTS")
    if external:
        service = CqlService(None, external=external)
        service.start()
        yield service
        return
    with _started(CqlService, "chatplane-cql-") as service:
        yield service
