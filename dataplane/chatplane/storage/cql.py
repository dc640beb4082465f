"""CQL plumbing for the ScyllaDB backend: settings, connecting, asyncio bridge.

`CqlSettings` says where the cluster is and how to talk to it; `connect()`
opens a `CqlSession` (token-aware, DC-aware routing; one consistency level for
everything, LOCAL_QUORUM unless told otherwise; LOCAL_SERIAL for conditional
writes). `CqlSession.run()` awaits a statement without blocking the event
loop: the driver's `ResponseFuture` callbacks fire on the driver's I/O thread
and are handed to the loop with `call_soon_threadsafe`.

Retries: the driver never re-sends a write on its own (`NoBlindWriteRetries`).
A write whose outcome is unknown surfaces here as `StorageUnavailable`; the
backend re-sends only writes that are safe to repeat (conditional inserts at a
fixed key, whose result tells whether the first attempt landed). So a timeout
never turns one send into two messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cassandra import (
    ConsistencyLevel,
    DriverException,
    RequestValidationException,
    UnresolvableContactPoints,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import ErrorMessage
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement, dict_factory

from chatplane import tracing
from chatplane.storage.base import StorageError, StorageUnavailable
from chatplane.storage.cql_metrics import CqlStats

log = logging.getLogger(__name__)

KEYSPACE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
Row = dict[str, Any]
Item = tuple[PreparedStatement, Sequence[Any]]  # a prepared statement and its values
T = TypeVar("T")
IN_FLIGHT = 128  # requests one batch of related work keeps in flight
BATCH_MAX = 64  # statements per unlogged batch
BATCH_BYTES = 24_000  # values per batch, under the server's 50 KB refusal threshold
# Combined write requests on the wire at once (`CqlSession.write`): beyond
# this, writes wait and go together in the next ones, so the number of
# requests per message falls as the load rises.
WRITES_IN_FLIGHT = 32
# Everything the driver raises: its own hierarchy is not rooted in one class.
DRIVER_ERRORS = (DriverException, NoHostAvailable, ConnectionException, ErrorMessage, OSError)


@dataclass(frozen=True)
class CqlSettings:
    """Where the CQL cluster is and how chatplane uses it.

    replication: {"class": "SimpleStrategy", "replication_factor": "1"} for one
    datacenter, or {"class": "NetworkTopologyStrategy", "dc1": "3", ...};
    `parse_replication()` builds it from "1" or "dc1=3,dc2=3". It is applied by
    `migrate()` (created, or altered when it differs), never by `open()`.
    Bucket sizes bound partitions; they are fixed when the keyspace is created.
    """

    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 9042
    keyspace: str = "chatplane"
    consistency: str = "LOCAL_QUORUM"
    serial_consistency: str = "LOCAL_SERIAL"
    # plain writes (not reads, not Paxos rounds); "" = `consistency`. EACH_QUORUM: a
    # quorum in every datacenter before a write returns (Cassandra takes it for writes
    # only, so it cannot be `consistency`): docs/architecture.md, "Regions on CQL"
    write_consistency: str = ""
    local_dc: str | None = None
    replication: Mapping[str, str] = field(
        default_factory=lambda: {"class": "SimpleStrategy", "replication_factor": "1"}
    )
    request_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    username: str = ""  # with password: PasswordAuthenticator credentials
    password: str = field(default="", repr=False)
    message_bucket: int = 1000
    inbox_bucket: int = 1000
    seq_block: int = 1000  # numbers reserved per conditional write (docs/storage.md)
    tls_ca: str = ""  # set: TLS to every node, verified against this CA (CHATPLANE_CQL_TLS_CA)
    tls_cert: str = ""  # optional client certificate and key
    tls_key: str = ""

    @classmethod
    def parse(cls, hosts: str, **kwargs: Any) -> CqlSettings:
        """From "h1,h2:9043" (the port of the last host that names one wins)."""
        names: list[str] = []
        port = int(kwargs.pop("port", 9042))
        for item in (part.strip() for part in hosts.split(",")):
            if not item:
                continue
            host, sep, port_text = item.rpartition(":")
            if sep and port_text.isdigit():
                names.append(host)
                port = int(port_text)
            else:
                names.append(item)
        if not names:
            raise StorageError("no CQL hosts given (e.g. --cql-hosts 10.0.0.1,10.0.0.2)")
        return cls(hosts=tuple(names), port=port, **kwargs)


def parse_replication(text: str) -> dict[str, str]:
    """"3" -> SimpleStrategy RF 3; "dc1=3,dc2=2" or the operator's JSON map
    '{"dc1": 3, "dc2": 2}' -> NetworkTopologyStrategy."""
    text = text.strip()
    if text.isdigit():
        return {"class": "SimpleStrategy", "replication_factor": text}
    spec: dict[str, str] = {"class": "NetworkTopologyStrategy"}
    if text.startswith("{"):
        try:
            factors = json.loads(text)
        except ValueError as exc:
            raise StorageError(f"bad replication {text!r}: {exc}") from exc
        if not isinstance(factors, dict) or not factors or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in factors.values()):
            raise StorageError(f"bad replication {text!r}: want {{\"dc\": factor, ...}}")
        return spec | {str(dc): str(factor) for dc, factor in factors.items()}
    for item in text.split(","):
        dc, sep, factor = item.strip().partition("=")
        if not sep or not dc.strip() or not factor.strip().isdigit():
            raise StorageError(f"bad replication {text!r}: use N or dc1=N,dc2=M")
        spec[dc.strip()] = factor.strip()
    return spec


def consistency_level(name: str) -> int:
    """The driver's level for a name such as LOCAL_QUORUM, or StorageError."""
    level = ConsistencyLevel.name_to_value.get(name.strip().upper())
    if level is None:
        known = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise StorageError(f"unknown CQL consistency {name!r} (one of {known})")
    return int(level)


def check_keyspace_name(name: str) -> str:
    if not KEYSPACE_PATTERN.match(name):
        raise StorageError(f"bad keyspace name {name!r}: letters, digits and _, at most 48")
    return name


class NoBlindWriteRetries(RetryPolicy):
    """Reads retry once; writes and unknown outcomes are never re-sent by the
    driver (the backend decides, knowing which writes are safe to repeat)."""

    def on_read_timeout(self, query: Any, consistency: Any, required_responses: int,
                        received_responses: int, data_retrieved: bool,
                        retry_num: int) -> tuple[int, Any]:
        if retry_num == 0 and received_responses >= required_responses:
            return self.RETRY, consistency
        return self.RETHROW, None

    def on_write_timeout(self, query: Any, consistency: Any, write_type: Any,
                         required_responses: int, received_responses: int,
                         retry_num: int) -> tuple[int, Any]:
        return self.RETHROW, None

    def on_unavailable(self, query: Any, consistency: Any, required_replicas: int,
                       alive_replicas: int, retry_num: int) -> tuple[int, Any]:
        # The coordinator refused before writing anything: another may accept.
        if retry_num == 0:
            return self.RETRY_NEXT_HOST, None
        return self.RETHROW, None

    def on_request_error(self, query: Any, consistency: Any, error: Exception,
                         retry_num: int) -> tuple[int, Any]:
        if retry_num == 0 and query is not None and getattr(query, "is_idempotent", False):
            return self.RETRY_NEXT_HOST, None
        return self.RETHROW, None


class CqlSession:
    """A connected session and the asyncio bridge to it."""

    def __init__(self, cluster: Cluster, session: Session, settings: CqlSettings) -> None:
        self.cluster = cluster
        self.session = session
        self.settings = settings
        self.serial = consistency_level(settings.serial_consistency)
        self.write_level = write_level(settings)
        self.stats = CqlStats()
        self._kinds: dict[int, tuple[str, bool]] = {}  # id(prepared) -> (kind, conditional)
        # writes waiting for a combined request, and how many are on the wire
        self._writes: list[tuple[Sequence[Item], asyncio.Future[None]]] = []
        self._writing = 0
        self._write_due = False
        self._write_tasks: set[asyncio.Future[None]] = set()

    async def prepare(self, query: str, *, idempotent: bool = False,
                      kind: str = "") -> PreparedStatement:
        try:
            statement = await asyncio.to_thread(self.session.prepare, query)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"cannot prepare CQL {query.split('(')[0]!r}: {exc}") from exc
        statement.is_idempotent = idempotent
        # a lightweight transaction (Paxos): a write with IF ...
        writes = query.split()[0].upper() in ("INSERT", "UPDATE", "DELETE")
        conditional = writes and bool(re.search(r"\sIF\s", query))
        if writes and not conditional and self.write_level is not None:
            statement.consistency_level = self.write_level
        self._kinds[id(statement)] = (kind or query.split()[0].lower(), conditional)
        return statement

    def kind_of(self, statement: Any) -> tuple[str, bool]:
        return self._kinds.get(id(statement), ("other", False))

    async def run_batch(self, items: Sequence[Item],
                        *, timeout_s: float | None = None) -> None:
        """Plain writes in one unlogged batch (one request; one statement is
        sent alone). Idempotent when all its statements are."""
        if len(items) == 1:
            await self.run(items[0][0], items[0][1], timeout_s=timeout_s)
            return
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        if self.write_level is not None:
            batch.consistency_level = self.write_level
        for statement, params in items:
            batch.add(statement, params)
        batch.is_idempotent = all(statement.is_idempotent for statement, _ in items)
        # what it carries, for metrics (and for tests that inject faults by query text)
        batch.chatplane_kinds = [self.kind_of(statement)[0] for statement, _ in items]
        batch.chatplane_queries = " ; ".join(statement.query_string for statement, _ in items)
        await self.run(batch, timeout_s=timeout_s)

    async def write(self, items: Sequence[Item]) -> None:
        """Plain, idempotent writes that may share one unlogged batch with the
        writes other callers make meanwhile (the driver's cost is per request,
        not per statement: at 1,000 messages a second one request per message
        is most of a core). A caller's items always travel together in one
        batch, so a partition's rows among them are applied together; the
        caller learns that batch's outcome. Writes go out on the next loop
        turn, at most WRITES_IN_FLIGHT requests at once: under load they wait
        and combine, idle they go alone."""
        if not items:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((items, done))
        self._schedule_writes()
        await done

    def _schedule_writes(self) -> None:
        if self._writes and not self._write_due and self._writing < WRITES_IN_FLIGHT:
            self._write_due = True
            asyncio.get_running_loop().call_soon(self._send_writes)

    def _send_writes(self) -> None:
        self._write_due = False
        while self._writes and self._writing < WRITES_IN_FLIGHT:
            taken: list[tuple[Sequence[Item], asyncio.Future[None]]] = []
            statements = size = 0
            while self._writes:
                items, _ = self._writes[0]
                grown = statements + len(items), size + approximate_size(items)
                if taken and (grown[0] > BATCH_MAX or grown[1] > BATCH_BYTES):
                    break
                taken.append(self._writes.pop(0))
                statements, size = grown
            self._writing += 1
            task = asyncio.get_running_loop().create_task(self._write_together(taken))
            self._write_tasks.add(task)
            task.add_done_callback(self._write_tasks.discard)

    async def _write_together(self, taken: list[tuple[Sequence[Item], asyncio.Future[None]]]
                              ) -> None:
        failure: BaseException | None = None
        try:
            await self.run_batch([item for items, _ in taken for item in items])
        except BaseException as exc:  # the callers' to raise (cancelled: at close)
            failure = exc
        finally:
            self._writing -= 1
            for _, done in taken:
                if not done.done():
                    if failure is None:
                        done.set_result(None)
                    else:
                        done.set_exception(failure)
            self._schedule_writes()

    async def run(self, statement: Statement | str, params: Sequence[Any] | None = None,
                  *, serial_read: bool = False, across_datacenters: bool = False,
                  timeout_s: float | None = None) -> list[Row]:
        """Execute and return all rows (statements here are bounded by LIMIT,
        so paging is off). Any driver failure becomes StorageUnavailable.
        across_datacenters: the serial read is at SERIAL whatever the settings say
        (rows every region decides on at once: homes)."""
        if serial_read:
            bound: Any = (statement.bind(params or ()) if isinstance(statement, PreparedStatement)
                          else statement)
            bound.consistency_level = ConsistencyLevel.SERIAL if across_datacenters else self.serial
            params = None if isinstance(statement, PreparedStatement) else params
            statement = bound
            kind, _ = self.kind_of(getattr(bound, "prepared_statement", None))
            kind, conditional = f"{kind}:serial", True  # a SERIAL read is a Paxos round too
        elif isinstance(statement, BatchStatement):
            kinds = getattr(statement, "chatplane_kinds", ["other"])
            return await self._execute(statement, None, timeout_s, "batch", False, kinds)
        else:
            kind, conditional = (self.kind_of(statement)
                                 if isinstance(statement, Statement | PreparedStatement)
                                 else ("text", False))  # DDL, schema reads, migrations
        return await self._execute(statement, params, timeout_s, kind, conditional, [kind])

    async def _execute(self, statement: Any, params: Sequence[Any] | None,
                       timeout_s: float | None, kind: str, conditional: bool,
                       carried: list[str]) -> list[Row]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[Row]] = loop.create_future()
        started = time.perf_counter()
        self.stats.carried(carried)

        def done(rows: list[Row]) -> None:
            loop.call_soon_threadsafe(_resolve, waiter, list(rows or ()), None)

        def failed(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_resolve, waiter, None, exc)

        failed_now = True
        try:
            with tracing.db_span("cassandra", kind, self.settings.keyspace):
                future = self.session.execute_async(
                    statement, params, timeout=timeout_s or self.settings.request_timeout_s)
                future.add_callbacks(done, failed)
                rows = await waiter
            failed_now = False
            return rows
        except RequestValidationException as exc:  # schema or query wrong: not retriable
            raise StorageError(f"CQL request rejected: {describe(exc)}") from exc
        except DRIVER_ERRORS as exc:
            raise StorageUnavailable(f"CQL request failed: {describe(exc)}") from exc
        finally:
            self.stats.request(kind, time.perf_counter() - started, conditional=conditional,
                               failed=failed_now)

    async def close(self, *, quiet: bool = False) -> None:
        """Shut the driver down. `quiet` (after a failed start, which the caller
        reports in one line): the driver's reactor warns when its thread takes
        over 5 s to join (a loaded machine), which says nothing to act on."""
        reactors = [logging.getLogger(name) for name in REACTOR_LOGGERS] if quiet else []
        for logger in reactors:
            logger.addFilter(_drop_all)
        try:
            await asyncio.to_thread(self.cluster.shutdown)
        finally:
            for logger in reactors:
                logger.removeFilter(_drop_all)


def approximate_size(items: Sequence[Item]) -> int:
    """The bytes of a write's text and blob values (what a batch limit counts)."""
    return sum(len(value) for _, params in items for value in params
               if isinstance(value, str | bytes))


async def gather_bounded(jobs: Iterable[Awaitable[T]], limit: int = IN_FLIGHT) -> list[T]:
    """asyncio.gather with at most `limit` jobs in flight (a group of 10,000
    members must not put 20,000 requests on the wire at once)."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        try:
            async with gate:
                return await job
        finally:
            # cancelled while queued at the gate (the caller's deadline): the job was
            # never started; close it, or it is reported as "never awaited"
            if asyncio.iscoroutine(job):
                job.close()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def _resolve(waiter: asyncio.Future[list[Row]], rows: list[Row] | None,
             exc: BaseException | None) -> None:
    if waiter.done():
        return
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(rows or [])


def describe(exc: BaseException) -> str:
    """One line for a driver error (NoHostAvailable nests one per host)."""
    if isinstance(exc, NoHostAvailable) and isinstance(exc.errors, dict) and exc.errors:
        host, error = next(iter(exc.errors.items()))
        return f"{host}: {error}".splitlines()[0]
    if isinstance(exc, NoHostAvailable) and exc.errors:
        # After the control connection, the driver lists only the addresses it tried (the
        # ones the server advertises as rpc_address, which may not be the contact points).
        return f"NoHostAvailable: {exc.args[0]}: tried {', '.join(map(str, exc.errors))}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text}"


QUIET_WHILE_CONNECTING = ("cassandra.cluster", "cassandra.connection", "cassandra.pool")
REACTOR_LOGGERS = ("cassandra.io.libevreactor", "cassandra.io.asyncorereactor")


def ssl_context(settings: CqlSettings) -> ssl.SSLContext | None:
    """The driver's TLS context: None without a CA; else every node's certificate
    must chain to it and name the address the node is dialed at (the driver passes
    it as the server name), and the client certificate is presented when given."""
    if not settings.tls_ca:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca)
        if settings.tls_cert:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise StorageError(f"CQL TLS files {settings.tls_ca} / {settings.tls_cert or '-'}: "
                           f"{exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _drop_all(record: logging.LogRecord) -> bool:
    return False


def write_level(settings: CqlSettings) -> int | None:
    """The plain writes' level when it differs from `consistency` (None: the same)."""
    if not settings.write_consistency:
        return None
    level = consistency_level(settings.write_consistency)
    if level in (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL):
        raise StorageError(f"write consistency cannot be {settings.write_consistency!r}")
    return level


def _build_cluster(settings: CqlSettings) -> Cluster:
    level = consistency_level(settings.consistency)
    write_level(settings)  # a bad name fails at start, with one line
    serial = consistency_level(settings.serial_consistency)
    if serial not in (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL):
        raise StorageError(f"serial consistency must be SERIAL or LOCAL_SERIAL, "
                           f"not {settings.serial_consistency!r}")
    routing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc or None))
    profile = ExecutionProfile(
        load_balancing_policy=routing,
        retry_policy=NoBlindWriteRetries(),
        consistency_level=level,
        serial_consistency_level=serial,
        request_timeout=settings.request_timeout_s,
        row_factory=dict_factory,
    )
    auth = (PlainTextAuthProvider(username=settings.username, password=settings.password)
            if settings.username else None)
    return Cluster(
        list(settings.hosts),
        port=settings.port,
        auth_provider=auth,
        ssl_context=ssl_context(settings),
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=settings.connect_timeout_s,
        control_connection_timeout=settings.connect_timeout_s,
        # back within seconds of the cluster's return (the default waits up to 10 min)
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=0.5, max_delay=5.0),
        max_schema_agreement_wait=30,
    )


async def connect(settings: CqlSettings) -> CqlSession:
    """Connect (in a thread: the driver's connect blocks) or raise StorageError
    with one line naming the hosts and the reason."""
    where = ", ".join(f"{host}:{settings.port}" for host in settings.hosts)
    try:
        cluster = _build_cluster(settings)
    except UnresolvableContactPoints as exc:
        raise StorageError(f"cannot resolve any of the CQL hosts {where}") from exc
    except DRIVER_ERRORS as exc:
        raise StorageError(f"bad CQL hosts {where}: {describe(exc)}") from exc
    # The driver logs each failed attempt with a traceback; a failed connect is
    # reported once, by the StorageError below, so keep those quiet meanwhile.
    loggers = [logging.getLogger(name) for name in QUIET_WHILE_CONNECTING]
    for logger in loggers:
        logger.addFilter(_drop_all)
    try:
        session = await asyncio.to_thread(cluster.connect)
    except DRIVER_ERRORS as exc:
        await asyncio.to_thread(cluster.shutdown)
        raise StorageError(f"cannot reach CQL hosts {where} ({describe(exc)})") from exc
    finally:
        for logger in loggers:
            logger.removeFilter(_drop_all)
    session.default_fetch_size = None
    return CqlSession(cluster, session, settings)
