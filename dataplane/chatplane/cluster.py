"""`chatplane cluster up`: a whole deployment on loopback, as real processes.

Redis (its own `redis-server`, unless a URL is given), K state, M im (sharing
the chosen storage: one SQLite file in shared mode, or a CQL cluster), N
gateways and ipconf, each a `chatplane <tier>` process with its own ports
(kept across restarts) and a log file. `Cluster` is also what the cluster
tests and benchmarks drive: `kill(name)` is kill -9, `start_member(name)`
brings it back, `terminate(name)` sends SIGTERM (a gateway drains).
`cluster up` starts a member that exits again (a drained gateway exits by
design, like a pod being replaced) and stops everything on Ctrl-C.

While it runs, `<workdir>/cluster.json` names every process (each member's
tier, PID and ports, and Redis's): `chatplane bench direct --cluster
<workdir>` reads it to report CPU per message per tier. It is rewritten when
a member starts again (a new PID) and removed at stop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner, read_or_create_secret
from chatplane.ports import free_port, free_port_pair
from chatplane.supervision import watched

STATE_FILE = "cluster.json"  # in the workdir: what runs there (bench direct --cluster)


@dataclass
class Member:
    name: str
    kind: str
    env: dict[str, str]
    http_port: int
    grpc_port: int = 0
    tcp_port: int = 0
    admin_port: int = 0  # admin API, /metrics, /admin/drain (rpc/adminport.py)
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    log_from: int = 0  # where this start's output begins in its log (appended across starts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, workdir: Path, *, gateways: int = 2, ims: int = 2, states: int = 1,
                 storage: str = "sqlite", redis_url: str = "", ipconf_port: int = 0,
                 env: dict[str, str] | None = None, grpc_port: int = 0) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.logs = self.workdir / "logs"
        self.redis_url = redis_url
        self.redis_port = 0
        self._redis: subprocess.Popen[bytes] | None = None
        self.extra_env = env or {}
        self.storage = storage
        self.ipconf_fixed = bool(ipconf_port)  # --port: the one address the user was told
        self.grpc_fixed = bool(grpc_port)  # --grpc-port: what the peer regions were told
        self.members: dict[str, Member] = {}
        self._state_lock = threading.Lock()
        plan = [("state", states), ("im", ims), ("gateway", gateways), ("ipconf", 1)]
        # grpc_port: the ims' gRPC ports are grpc_port, grpc_port + 1, ... (a peer region
        # lists them as this region's endpoint: docs/cluster.md, "Regions")
        fixed_grpc = iter(range(grpc_port, grpc_port + ims)) if grpc_port else None
        for kind, count in plan:
            for i in range(1, count + 1):
                name = {"gateway": f"gw-{i}", "ipconf": "ipconf"}.get(kind, f"{kind}-{i}")
                fixed = kind == "ipconf" and ipconf_port  # --port: its admin port is any free one
                port = ipconf_port if fixed else free_port_pair()
                grpc = (next(fixed_grpc) if fixed_grpc is not None and kind == "im"
                        else free_port() if kind != "ipconf" else 0)
                self.members[name] = Member(
                    name, kind, {}, port, grpc_port=grpc,
                    tcp_port=free_port() if kind == "gateway" else 0,
                    admin_port=free_port() if fixed else port + 1)

    @property
    def region_endpoint(self) -> str:
        """What a peer region lists as this region's endpoint: every im's gRPC address."""
        return ",".join(f"127.0.0.1:{self.members[n].grpc_port}" for n in self.names("im"))

    @property
    def dispatch_url(self) -> str:
        return self.members["ipconf"].url

    def names(self, kind: str) -> list[str]:
        return [m.name for m in self.members.values() if m.kind == kind]

    # -- redis -----------------------------------------------------------------

    def start_redis(self, timeout_s: float = 10.0) -> None:
        if self.redis_url and self._redis is None and not self.redis_port:
            return  # an external Redis
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/setup/10-redis.sh)")
        self.redis_port = self.redis_port or free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        log = (self.logs / "redis.log").open("ab")
        self._redis = subprocess.Popen(
            watched([binary, "--bind", "127.0.0.1", "--port", str(self.redis_port),
                     "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        self.write_state()
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")

    def restart_redis_empty(self) -> None:
        """kill -9 Redis and start it again on the same port, empty."""
        if self._redis is not None:
            self._redis.kill()
            self._redis.wait(10)
            self._redis = None
        self.start_redis()

    # -- members -----------------------------------------------------------------

    def _env(self, m: Member) -> dict[str, str]:
        env = {**os.environ, "CHATPLANE_REDIS_URL": self.redis_url,
               "CHATPLANE_DATA_DIR": str(self.data_dir), "CHATPLANE_SERVER_ID": m.name,
               "CHATPLANE_HOST": "127.0.0.1", "CHATPLANE_HTTP_PORT": str(m.http_port),
               "CHATPLANE_STORAGE": self.storage, "CHATPLANE_SQLITE_SHARED": "1",
               **self.extra_env, **m.env}
        if m.grpc_port:
            env["CHATPLANE_GRPC_PORT"] = str(m.grpc_port)
        if m.tcp_port:
            env["CHATPLANE_TCP_PORT"] = str(m.tcp_port)
        if m.admin_port:
            env["CHATPLANE_ADMIN_PORT"] = str(m.admin_port)
        return env

    def start_member(self, name: str, wait_s: float | None = 30.0) -> None:
        m = self.members[name]
        m.ready.clear()
        out = (self.logs / f"{name}.log").open("ab")
        m.log_from = out.tell()
        m.proc = subprocess.Popen(
            watched([sys.executable, "-m", "chatplane.cli", "--log-level", "WARNING", m.kind]),
            stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL, env=self._env(m),
            start_new_session=True)

        def pump(proc: subprocess.Popen[bytes], member: Member) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if b" ready " in line:
                    member.ready.set()

        threading.Thread(target=pump, args=(m.proc, m), daemon=True).start()
        self.write_state()
        if wait_s is not None:
            self.wait_ready([name], wait_s)

    def _moved(self, m: Member) -> bool:
        """A port of `m` was taken meanwhile (a client's ephemeral port, or
        another process handing out ports, e.g. a second test worker): give it
        new ones and start it again, once (ipconf and the ims too, unless --port or
        --grpc-port fixed the ports peers were told)."""
        with (self.logs / f"{m.name}.log").open("rb") as log:
            log.seek(m.log_from)  # this start's output (a traceback may follow the error)
            said = log.read().decode(errors="replace")
        fixed = (m.kind == "ipconf" and self.ipconf_fixed) or (m.kind == "im" and self.grpc_fixed)
        if "address already in use" not in said.lower() or fixed:  # (gRPC says "Address")
            return False
        m.http_port = free_port_pair()
        m.grpc_port = free_port() if m.grpc_port else 0
        m.tcp_port = free_port() if m.tcp_port else 0
        m.admin_port = m.http_port + 1
        self.start_member(m.name, wait_s=None)
        return True

    def wait_ready(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            m = self.members[name]
            moved = False
            while not m.ready.wait(0.05):
                if not m.alive and not moved:
                    m.proc.wait(5) if m.proc is not None else None
                    moved = self._moved(m)
                    if moved:
                        continue
                if not m.alive or time.monotonic() > deadline:
                    tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} did not get ready:\n{tail}")

    def kill(self, name: str) -> None:
        m = self.members[name]
        if m.proc is not None and m.proc.poll() is None:
            os.killpg(m.proc.pid, signal.SIGKILL)
            m.proc.wait(10)

    def terminate(self, name: str, wait_s: float | None = 30.0) -> int | None:
        m = self.members[name]
        if m.proc is None or m.proc.poll() is not None:
            return None
        m.proc.send_signal(signal.SIGTERM)
        if wait_s is None:
            return None
        try:
            return m.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.kill(name)
            return None

    def start(self, timeout_s: float = 60.0) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        TokenSigner.from_data_dir(self.data_dir)  # create the keys once, before the tiers
        read_or_create_secret(self.data_dir / ADMIN_SECRET_FILE)
        self.start_redis()
        ims = self.names("im")
        if ims:  # the first im creates the schema alone
            self.start_member(ims[0], timeout_s)
        rest = [n for n in self.members if n not in ims[:1]]
        for name in rest:
            self.start_member(name, wait_s=None)
        self.wait_ready(rest, timeout_s)

    def state(self) -> dict[str, object]:
        """What runs here, as `cluster.json` holds it."""
        redis_pid = self._redis.pid if self._redis is not None else 0
        return {
            "dispatch": self.dispatch_url,
            "data_dir": str(self.data_dir),
            "redis": {"url": self.redis_url, "pid": redis_pid},
            "members": [
                {"name": m.name, "tier": m.kind, "pid": m.proc.pid if m.proc is not None else 0,
                 "url": m.url, "admin_url": m.admin_url, "grpc_port": m.grpc_port,
                 "tcp_port": m.tcp_port}
                for m in self.members.values()
            ],
        }

    def write_state(self) -> None:
        """(Re)write `cluster.json` whole: a reader never sees half of it."""
        path = self.workdir / STATE_FILE
        partial = path.with_suffix(".json.partial")
        with self._state_lock:
            partial.write_text(json.dumps(self.state(), indent=2) + "\n")
            partial.replace(path)

    def stop(self) -> None:
        (self.workdir / STATE_FILE).unlink(missing_ok=True)
        for m in self.members.values():
            if m.alive:
                assert m.proc is not None
                os.killpg(m.proc.pid, signal.SIGINT)
        for m in self.members.values():
            if m.proc is not None:
                try:
                    m.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(m.proc.pid, signal.SIGKILL)
                    m.proc.wait(5)
        if self._redis is not None:
            self._redis.terminate()
            self._redis.wait(10)
            self._redis = None

    @property
    def signer(self) -> TokenSigner:
        return TokenSigner.from_data_dir(self.data_dir)

    @property
    def admin_secret(self) -> str:
        """The members' admin secret (CHATPLANE_ADMIN_SECRET, else the data dir's file)."""
        return (self.extra_env.get("CHATPLANE_ADMIN_SECRET")
                or read_or_create_secret(self.data_dir / ADMIN_SECRET_FILE))


def cmd_cluster_up(args: argparse.Namespace) -> int:
    workdir = Path(args.data_dir).resolve()
    env = {name: value for name, value in (
        ("CHATPLANE_REGION", args.region), ("CHATPLANE_PEERS", args.peers),
        ("CHATPLANE_REGION_DURABILITY", args.durability or ("async" if args.peers else None)),
    ) if value}
    cluster = Cluster(workdir, gateways=args.gateways, ims=args.ims, states=args.states,
                      storage=args.storage, redis_url=args.redis_url or "", ipconf_port=args.port,
                      env=env, grpc_port=args.grpc_port or 0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
        gws = ",".join(cluster.members[n].url for n in cluster.names("gateway"))
        admins = ",".join(f"{m.name}={m.admin_url}" for m in cluster.members.values())
        ims = ",".join(f"127.0.0.1:{cluster.members[n].grpc_port}" for n in cluster.names("im"))
        print(f"chatplane cluster ready dispatch={cluster.dispatch_url} gateways={gws} "
              f"im={len(cluster.names('im'))} state={len(cluster.names('state'))} "
              f"im_grpc={ims} region={args.region or 'local'} "
              f"redis={cluster.redis_url} data={cluster.data_dir} logs={cluster.logs} "
              f"admin={admins}", flush=True)
        restarts: dict[str, float] = {}
        while not stop.wait(0.5):
            # a member that exits is replaced, as a Deployment would (a
            # drained gateway exits by design); one that keeps dying stops all
            for m in cluster.members.values():
                if m.alive or stop.is_set():
                    continue
                code = m.proc.returncode if m.proc is not None else None
                if time.monotonic() - restarts.get(m.name, -1e9) < 10.0:
                    raise RuntimeError(f"{m.name} keeps exiting (code {code}); see {cluster.logs}")
                print(f"chatplane cluster: {m.name} exited (code {code}); starting it again",
                      flush=True)
                restarts[m.name] = time.monotonic()
                cluster.start_member(m.name, wait_s=None)
    except RuntimeError as exc:
        print(f"chatplane cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()
        print("chatplane cluster stopped", flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    cluster = sub.add_parser("cluster", help="a whole deployment on loopback")
    actions = cluster.add_subparsers(dest="action", required=True)
    up = actions.add_parser("up", help="start every tier as its own process; Ctrl-C stops all")
    up.add_argument("--gateways", type=int, default=2)
    up.add_argument("--ims", type=int, default=2)
    up.add_argument("--states", type=int, default=1)
    up.add_argument("--storage", choices=("sqlite", "scylla"), default="sqlite")
    up.add_argument("--redis-url", help="use this Redis instead of starting one")
    up.add_argument("--port", type=int, default=0, help="ipconf (dispatch) port; 0 = any")
    up.add_argument("--data-dir", default="./chatplane-cluster", help="data, keys and logs")
    # a region of several (docs/cluster.md, "Regions"): named as `chatplane up` names them
    up.add_argument("--region", help="this region's name (CHATPLANE_REGION, default local)")
    up.add_argument("--peers", help='peer regions, JSON [{"name", "endpoint"}]; a peer '
                                    "cluster's endpoint lists its ims: "
                                    '"127.0.0.1:P,127.0.0.1:P+1" (CHATPLANE_PEERS)')
    up.add_argument("--grpc-port", type=int,
                    help="the first im's gRPC port, the others' follow (default: any free)")
    up.add_argument("--durability", choices=("sync", "async"),
                    help="with --peers: async (the default here); sync on a CQL keyspace "
                         "shared by the regions needs CHATPLANE_CQL_WRITE_CONSISTENCY="
                         "EACH_QUORUM (docs/cluster.md, \"Regions on CQL\")")
    up.set_defaults(func=cmd_cluster_up)
