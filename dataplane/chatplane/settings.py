"""Settings: one tree of dataclasses, read once at start and passed down.

Every field can come from the environment as CHATPLANE_<NAME> (the names the
operator sets) and, for the common ones, from command-line flags. A bad value
fails at start with one line that names the setting.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from typing import Any

from chatplane import peerlist


class SettingsError(Exception):
    """Bad configuration: printed as one line, exit code 2."""


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 64 * 1024
    rate_limit_frames_per_s: float = 500.0
    rate_limit_burst: int = 1000
    heartbeat_interval_ms: int = 15_000
    login_timeout_ms: int = 10_000
    max_history_page: int = 200
    max_sync_page: int = 500
    max_text_bytes: int = 16 * 1024


@dataclass(frozen=True)
class Delivery:
    push_window: int = 512  # unacked pushes per device before it must sync
    retransmit_ms: int = 1_000  # first retransmission timeout
    retransmit_max_ms: int = 8_000
    retransmit_attempts: int = 8  # then the device is closed as a slow consumer


@dataclass(frozen=True)
class Social:
    direct_requires_friendship: int = 0  # 1: 1:1 chat only between friends
    members_can_invite: int = 0  # 1: any member may invite, not only owner/admins
    large_group_threshold: int = 500  # above: no per-read receipts (DESIGN §4)
    max_group_members: int = 20_000
    group_push_interval_ms: int = 100  # a busy large group pushes one batch per interval
    group_push_max_messages: int = 200  # past this a batch becomes a "pull up to N" notice
    hot_cache_messages: int = 100_000  # recent messages kept in memory (0: off)


@dataclass(frozen=True)
class Drain:
    rate: float = 500.0  # connections told to reconnect per second
    deadline_s: float = 60.0
    reconnect_delay_ms: int = 200
    # 0: a drained gateway stays (empty, not ready) until SIGTERM. In a pod the preStop hook
    # (`chatplane drain --wait`) must return before the process exits, and a container that
    # exits by itself is restarted in place, serving again until its pod is deleted.
    exit_when_empty: int = 1


@dataclass(frozen=True)
class Storage:
    backend: str = "sqlite"
    data_dir: str = "./chatplane-data"
    sqlite_synchronous: str = "FULL"
    sqlite_shared: int = 0  # 1: other processes write the same file (cluster up)
    cql_hosts: str = ""
    keyspace: str = "chatplane"
    cql_consistency: str = "LOCAL_QUORUM"
    cql_serial_consistency: str = "LOCAL_SERIAL"  # SERIAL: conditional writes across regions
    # plain writes only, "" = cql_consistency; EACH_QUORUM: in every datacenter before the ack
    cql_write_consistency: str = ""
    cql_datacenter: str = ""
    cql_replication: str = ""  # "3", "dc1=3,dc2=3" or a JSON map; applied by `storage migrate`
    cql_username: str = ""
    cql_password: str = ""
    redis_url: str = ""


@dataclass(frozen=True)
class Archive:
    """The cold tier (docs/storage.md, "Archive")."""

    archive_after_days: float = 30.0  # messages older than this move to segments (0: never)
    archive_dir: str = ""  # where segments go; "" = <data_dir>/archive (embedded storage only)
    archive_interval_s: float = 3600.0  # between background runs
    archive_segment_messages: int = 1000  # messages per segment at most
    retention_days_direct: float = 0.0  # archived content deleted after this (0: kept)
    retention_days_group: float = 0.0
    retention_days_events: float = 0.0
    # segments on S3-compatible object storage instead of a directory (production):
    # the endpoint (http(s)://host[:port]), a bucket that exists, static keys
    archive_s3_endpoint: str = ""
    archive_s3_bucket: str = ""
    archive_s3_region: str = "us-east-1"
    archive_s3_prefix: str = ""  # object names start with this (one bucket, several clusters)
    archive_s3_access_key: str = ""
    archive_s3_secret_key: str = ""


@dataclass(frozen=True)
class Server:
    host: str = "127.0.0.1"
    http_port: int = 8080
    tcp_port: int = 0  # 0: no raw TCP listener
    region: str = "local"
    cluster: str = ""  # the deployment's id, told to peer regions (the operator: namespace/name)
    server_id: str = ""
    token_secret: str = ""  # empty: the data dir's key file
    admin_secret: str = ""  # empty: the data dir's secret file
    advertise_url: str = ""  # the ws URL dispatch hands out; derived when empty
    # host:port dispatch hands out for the raw TCP port (tcps:// prefixed with TLS); derived
    # from the listen address when empty
    advertise_tcp: str = ""
    dev_login: int = 0  # 1: the web app offers a token for any user id (loopback hosts only)


@dataclass(frozen=True)
class Links:
    """The tiers as separate services (`chatplane gateway|state|im|ipconf`)."""

    grpc_port: int = 9090
    grpc_advertise_host: str = ""  # the host peers dial; server.host when empty
    state_addrs: str = ""  # host:port,...; empty: state instances from Redis
    im_addrs: str = ""  # host:port,...; empty: im instances from Redis
    rpc_deadline_s: float = 2.0
    registry_ttl_s: float = 3.0  # an instance silent this long is dead
    head_check_s: float = 30.0  # gateway: compare connected devices' inbox heads (0: off)
    otlp_endpoint: str = ""  # OTLP/gRPC collector; empty: no trace export
    # share of requests traced (parent-based: a traced caller's calls are traced)
    trace_sample_ratio: float = 1.0
    peers: str = ""  # JSON [{name, endpoint, datacenter}]: the other regions (peerlist.py)
    peer_probe_s: float = 2.0  # how often each peer gets a Hello
    peer_timeout_s: float = 1.0  # the deadline of one Hello
    # with peers: "sync" acks a homed chat's send once another region applied it,
    # "async" on the home's local durability (docs/architecture.md, "Durability modes")
    region_durability: str = "sync"
    region_sync_timeout_s: float = 3.0  # sync: no peer confirmed within this -> UNAVAILABLE
    # a peer region unanswering this long is lost: its homes are taken over here when the
    # failover witness grants it (docs/architecture.md, "Failover"); 0: never
    failover_after_s: float = 5.0
    # host:port of the failover witness (`chatplane witness`) both regions reach; empty:
    # failover is off (two regions alone cannot tell a partition from a loss)
    failover_witness: str = ""
    # im: caches of members, relations and settings are trusted only while the
    # invalidation stream was read within this (the staleness bound, docs/caches.md)
    cache_bound_s: float = 2.0


@dataclass(frozen=True)
class Supervision:
    """Long-lived tasks and the storage writer (chatplane.supervision)."""

    wedge_s: float = 10.0  # a storage write queued longer than this: not ready
    max_restarts: int = 5  # a task failing more often than this within restart_window_s
    restart_window_s: float = 60.0  # ... makes the process exit non-zero
    restart_backoff_s: float = 0.5  # first delay before a restart; doubles, up to 10 s


@dataclass(frozen=True)
class Tokens:
    """Token keys and live-session checks (docs/operations.md, "Token keys")."""

    keys: str = ""  # "kid1:secret1,kid2:secret2": the first signs, all verify; empty: k0
    keys_file: str = ""  # the same list in a file, re-read when it changes (wins over keys)
    session_check_s: float = 5.0  # an expired or revoked session is closed within this


@dataclass(frozen=True)
class Admin:
    """The admin listener (docs/admin-api.md): admin API, /metrics, drain."""

    port: int = -1  # -1: http_port + 1 (+ 2 if that is tcp_port; 0 when http_port is 0)
    audit_log: str = ""  # JSON lines of admin actions: a path, "-" or empty: stderr


@dataclass(frozen=True)
class Tls:
    """TLS on every link (docs/operations.md "TLS"). Files are PEM paths."""

    cert: str = ""  # client-facing cert (HTTPS/WSS and TCP+TLS); reloaded when the file changes
    key: str = ""
    grpc_ca: str = ""  # all three set: mutual TLS on every gRPC link between tiers
    grpc_cert: str = ""  # subject CN = this process's role (rpc/callers.py)
    grpc_key: str = ""
    peer_ca: str = ""  # what peer regions' certs chain to; grpc_ca when empty
    links_secret: str = ""  # without gRPC TLS: signs the per-role call credential; data dir file when empty
    redis_ca: str = ""  # with rediss://
    redis_cert: str = ""
    redis_key: str = ""
    cql_ca: str = ""  # set: the CQL driver connects over TLS (cert/key optional)
    cql_cert: str = ""
    cql_key: str = ""


@dataclass(frozen=True)
class Abuse:
    """Limits that keep one client (or one address) from hurting the others
    (docs/operations.md, "Abuse limits")."""

    header_timeout_s: float = 10.0  # HTTP: accept -> complete request head (and idle keep-alive)
    max_connections: int = 0  # both listeners; 0: the open-file limit less a reserve
    max_connections_per_ip: int = 2_000  # one source address (a NAT'ed office fits)
    # addresses the per-address cap skips (CIDRs): a local proxy or bench
    per_ip_exempt: str = "127.0.0.1/32,::1/128"
    send_rate_per_user_s: float = 100.0  # sends of one user (all its devices on a gateway)
    send_burst_per_user: int = 500
    max_inflight_sends: int = 128  # per connection; told in LoginAck
    group_add_requires_consent: int = 1  # 1: non-friends added to a group get an invitation
    invite_rate_per_user_s: float = 5.0  # group invitations one user sends (per im process)
    invite_burst_per_user: int = 2_000


@dataclass(frozen=True)
class Settings:
    server: Server = field(default_factory=Server)
    storage: Storage = field(default_factory=Storage)
    limits: Limits = field(default_factory=Limits)
    delivery: Delivery = field(default_factory=Delivery)
    drain: Drain = field(default_factory=Drain)
    social: Social = field(default_factory=Social)
    links: Links = field(default_factory=Links)
    supervision: Supervision = field(default_factory=Supervision)
    tokens: Tokens = field(default_factory=Tokens)
    admin: Admin = field(default_factory=Admin)
    tls: Tls = field(default_factory=Tls)
    abuse: Abuse = field(default_factory=Abuse)
    archive: Archive = field(default_factory=Archive)


# Environment names that differ from CHATPLANE_<FIELD>.
ENV_ALIASES = {
    ("server", "http_port"): "CHATPLANE_HTTP_PORT",
    ("server", "advertise_url"): "CHATPLANE_GATEWAY_ADVERTISE_URL",
    ("server", "advertise_tcp"): "CHATPLANE_GATEWAY_ADVERTISE_TCP",
    ("storage", "backend"): "CHATPLANE_STORAGE",
    ("drain", "rate"): "CHATPLANE_DRAIN_RATE",
    ("drain", "deadline_s"): "CHATPLANE_DRAIN_DEADLINE_S",
    ("drain", "exit_when_empty"): "CHATPLANE_DRAIN_EXIT_WHEN_EMPTY",
    ("tokens", "keys"): "CHATPLANE_TOKEN_KEYS",
    ("tokens", "keys_file"): "CHATPLANE_TOKEN_KEYS_FILE",
    ("admin", "port"): "CHATPLANE_ADMIN_PORT",
    ("tls", "cert"): "CHATPLANE_TLS_CERT",
    ("tls", "key"): "CHATPLANE_TLS_KEY",
    ("tls", "grpc_ca"): "CHATPLANE_GRPC_TLS_CA",
    ("tls", "grpc_cert"): "CHATPLANE_GRPC_TLS_CERT",
    ("tls", "grpc_key"): "CHATPLANE_GRPC_TLS_KEY",
    ("tls", "peer_ca"): "CHATPLANE_PEER_TLS_CA",
    ("tls", "redis_ca"): "CHATPLANE_REDIS_TLS_CA",
    ("tls", "redis_cert"): "CHATPLANE_REDIS_TLS_CERT",
    ("tls", "redis_key"): "CHATPLANE_REDIS_TLS_KEY",
    ("tls", "cql_ca"): "CHATPLANE_CQL_TLS_CA",
    ("tls", "cql_cert"): "CHATPLANE_CQL_TLS_CERT",
    ("tls", "cql_key"): "CHATPLANE_CQL_TLS_KEY",
}


def admin_port(s: Settings) -> int:
    """The admin listener's port: CHATPLANE_ADMIN_PORT, else http_port + 1
    (+ 2 when the TCP port is http_port + 1; any free port when http_port is 0)."""
    if s.admin.port >= 0:
        return s.admin.port
    if not s.server.http_port:
        return 0
    after = s.server.http_port + 1
    return after + 1 if after == s.server.tcp_port else after


def env_name(section: str, name: str) -> str:
    return ENV_ALIASES.get((section, name), f"CHATPLANE_{name.upper()}")


def _convert(section: str, name: str, kind: Any, raw: str) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            value = float(raw)
            if not math.isfinite(value):  # "nan", "inf": never a setting
                raise ValueError(raw)
            return value
        return raw
    except ValueError:
        raise SettingsError(f"{section}.{name}: {raw!r} is not a valid {kind}") from None


def load(overrides: dict[str, dict[str, Any]] | None = None,
         environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then the environment, then explicit overrides (CLI flags)."""
    env = os.environ if environ is None else environ
    settings = Settings()
    sections: dict[str, Any] = {}
    for section_field in fields(settings):
        section = getattr(settings, section_field.name)
        values: dict[str, Any] = {}
        for f in fields(section):
            raw = env.get(env_name(section_field.name, f.name))
            if raw is not None and raw != "":
                values[f.name] = _convert(section_field.name, f.name, f.type, raw)
        values.update((overrides or {}).get(section_field.name, {}))
        sections[section_field.name] = replace(section, **values)
    result = Settings(**sections)
    validate(result)
    return result


def validate(s: Settings) -> None:
    problems = []
    if not 0 <= s.server.http_port < 65536:
        problems.append(f"http port {s.server.http_port} out of range")
    if not 0 <= s.server.tcp_port < 65536:
        problems.append(f"tcp port {s.server.tcp_port} out of range")
    if s.server.dev_login not in (0, 1):
        problems.append("dev_login must be 0 or 1")
    if s.drain.exit_when_empty not in (0, 1):
        problems.append("drain.exit_when_empty must be 0 or 1")
    if s.server.dev_login and s.server.host not in ("127.0.0.1", "localhost", "::1"):
        problems.append(f"dev_login signs tokens for anyone: loopback hosts only, not {s.server.host!r}")
    if s.storage.backend not in ("sqlite", "scylla"):
        problems.append(f"storage backend must be sqlite or scylla, not {s.storage.backend!r}")
    if s.limits.max_frame_bytes < 1024:
        problems.append("max_frame_bytes must be at least 1024")
    if s.limits.max_history_page < 200 or s.limits.max_sync_page < 500:
        problems.append("max_history_page must be at least 200 and max_sync_page at least 500"
                        " (the SDK's pages; a larger page is refused, not cut)")
    if s.limits.max_text_bytes < 1:
        problems.append("max_text_bytes must be at least 1")
    if s.limits.rate_limit_frames_per_s <= 0 or s.limits.rate_limit_burst <= 0:
        problems.append("rate limits must be positive")
    if not 0 < s.drain.rate <= 100_000 or not 0 < s.drain.deadline_s <= 86_400:
        problems.append("drain rate must be in (0, 100000] and drain deadline_s in (0, 86400]"
                        " (protocol/jsonbounds.py)")
    if s.delivery.push_window < 1:
        problems.append("push_window must be at least 1")
    if not 0 <= s.links.trace_sample_ratio <= 1:
        problems.append(f"trace_sample_ratio must be in [0, 1], not {s.links.trace_sample_ratio}")
    if not 0.05 <= s.links.cache_bound_s <= 60:
        problems.append(f"cache_bound_s must be in [0.05, 60], not {s.links.cache_bound_s}")
    if s.links.peer_probe_s <= 0 or s.links.peer_timeout_s <= 0:
        problems.append("peer_probe_s and peer_timeout_s must be positive")
    if s.links.region_durability not in ("sync", "async"):
        problems.append("CHATPLANE_REGION_DURABILITY must be sync or async, not"
                        f" {s.links.region_durability!r}")
    if not 0.1 <= s.links.region_sync_timeout_s <= 60:
        problems.append("CHATPLANE_REGION_SYNC_TIMEOUT_S must be in [0.1, 60], not"
                        f" {s.links.region_sync_timeout_s}")
    if s.links.failover_after_s != 0 and not (
            s.links.peer_probe_s + s.links.peer_timeout_s < s.links.failover_after_s <= 3600):
        problems.append("CHATPLANE_FAILOVER_AFTER_S must be 0 (off) or above peer_probe_s +"
                        f" peer_timeout_s and at most 3600, not {s.links.failover_after_s}")
    if s.links.failover_witness:
        host, _, port = s.links.failover_witness.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(host) > 512:
            problems.append("CHATPLANE_FAILOVER_WITNESS must be host:port, not"
                            f" {s.links.failover_witness!r}")
    try:
        peerlist.parse(s.links.peers, s.server.region)
    except peerlist.PeerListError as exc:
        problems.append(f"CHATPLANE_PEERS: {exc}")
    a = s.abuse
    if not a.header_timeout_s > 0 or a.header_timeout_s > 3600:
        problems.append("abuse.header_timeout_s must be in (0, 3600]")
    if a.max_connections < 0 or a.max_connections_per_ip < 1:
        problems.append("abuse.max_connections must be >= 0 and max_connections_per_ip >= 1")
    if not a.send_rate_per_user_s > 0 or a.send_burst_per_user < 1 or a.max_inflight_sends < 1:
        problems.append("abuse.send_rate_per_user_s, send_burst_per_user and max_inflight_sends"
                        " must be positive")
    try:
        [ipaddress.ip_network(n.strip()) for n in a.per_ip_exempt.split(",") if n.strip()]
    except ValueError as exc:
        problems.append(f"abuse.per_ip_exempt: {exc}")
    if not a.invite_rate_per_user_s > 0 or a.invite_burst_per_user < 1:
        problems.append("abuse.invite_rate_per_user_s and invite_burst_per_user must be positive")
    if a.group_add_requires_consent not in (0, 1):
        problems.append("abuse.group_add_requires_consent must be 0 or 1")
    redis_scheme = s.storage.redis_url.partition("://")[0]
    if s.storage.redis_url and redis_scheme not in ("redis", "rediss", "unix"):
        problems.append(f"redis_url must be redis://, rediss:// or unix://, not {s.storage.redis_url!r}")
    sup = s.supervision
    if not (sup.wedge_s > 0 and sup.max_restarts >= 1 and sup.restart_window_s > 0
            and sup.restart_backoff_s > 0):
        problems.append("supervision: wedge_s, restart_window_s and restart_backoff_s must be"
                        " positive, max_restarts at least 1")
    if not 0 < s.tokens.session_check_s <= 3600:
        problems.append("session_check_s must be in (0, 3600]")
    if s.tokens.keys and not s.tokens.keys_file:
        from chatplane.auth import parse_keys
        try:
            parse_keys(s.tokens.keys)
        except ValueError as exc:
            problems.append(f"CHATPLANE_TOKEN_KEYS: {exc}")
    if not -1 <= s.admin.port < 65536:
        problems.append(f"admin port {s.admin.port} out of range")
    elif s.admin.port > 0 and s.admin.port in (s.server.http_port, s.server.tcp_port):
        problems.append(f"admin port {s.admin.port} must differ from the public ports")
    problems += _tls_problems(s.tls) + _archive_problems(s.archive)
    if problems:
        raise SettingsError("; ".join(problems))


def _archive_problems(a: Archive) -> list[str]:
    problems = []
    if a.archive_after_days < 0 or a.archive_interval_s <= 0 or a.archive_segment_messages < 1:
        problems.append("archive: archive_after_days must be >= 0, archive_interval_s > 0 and"
                        " archive_segment_messages >= 1")
    for kind in ("direct", "group", "events"):
        days = getattr(a, f"retention_days_{kind}")
        if days < 0 or (days and days < a.archive_after_days):
            problems.append(f"archive: retention_days_{kind} must be 0 (kept) or at least"
                            f" archive_after_days ({a.archive_after_days})")
    return problems + _s3_problems(a)


def _s3_problems(a: Archive) -> list[str]:
    if not a.archive_s3_endpoint:
        stray = [f.name for f in fields(a) if f.name.startswith("archive_s3_")
                 and f.name != "archive_s3_region" and getattr(a, f.name)]
        return [f"archive: {', '.join(stray)} set without archive_s3_endpoint"] if stray else []
    problems = []
    endpoint = urllib.parse.urlsplit(a.archive_s3_endpoint)
    if endpoint.scheme not in ("http", "https") or not endpoint.hostname or (
            endpoint.path not in ("", "/")) or endpoint.query or endpoint.username:
        problems.append(f"archive: archive_s3_endpoint must be http(s)://host[:port], not"
                        f" {a.archive_s3_endpoint!r}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", a.archive_s3_bucket):
        problems.append(f"archive: archive_s3_bucket must be an S3 bucket name (3-63 of a-z"
                        f" 0-9 . -), not {a.archive_s3_bucket!r}")
    if not (a.archive_s3_access_key and a.archive_s3_secret_key):
        problems.append("archive: set both archive_s3_access_key and archive_s3_secret_key")
    if a.archive_dir:
        problems.append("archive: archive_dir and archive_s3_endpoint exclude each other")
    if not re.fullmatch(r"[a-z0-9-]{1,40}", a.archive_s3_region):
        problems.append(f"archive: archive_s3_region {a.archive_s3_region!r} is not a region")
    return problems


def _tls_problems(t: Tls) -> list[str]:
    """Pairs that must come together, and files that must be readable at start."""
    problems = []
    if bool(t.cert) != bool(t.key):
        problems.append("tls: set both CHATPLANE_TLS_CERT and CHATPLANE_TLS_KEY, or neither")
    grpc_set = [bool(t.grpc_ca), bool(t.grpc_cert), bool(t.grpc_key)]
    if any(grpc_set) and not all(grpc_set):
        problems.append("tls: set all of CHATPLANE_GRPC_TLS_CA, _CERT and _KEY, or none")
    if t.peer_ca and not t.grpc_ca:
        problems.append("tls: CHATPLANE_PEER_TLS_CA needs the CHATPLANE_GRPC_TLS_* files")
    for pair, names in (((t.redis_cert, t.redis_key), "REDIS"), ((t.cql_cert, t.cql_key), "CQL")):
        if bool(pair[0]) != bool(pair[1]):
            problems.append(f"tls: set both CHATPLANE_{names}_TLS_CERT and _KEY, or neither")
    for f in fields(t):
        path = getattr(t, f.name)
        if f.name != "links_secret" and path and not os.access(path, os.R_OK):
            problems.append(f"tls: {env_name('tls', f.name)}={path!r} is not a readable file")
    return problems


def up_problem(s: Settings) -> str | None:
    """What `chatplane up` refuses beyond `validate`: regions on one CQL keyspace in
    `sync` durability ack a message once its writes are in every datacenter, so the
    write level must say so (docs/architecture.md, "Regions on CQL")."""
    if s.storage.backend != "scylla" or s.links.peers.strip() in ("", "[]"):
        return None
    level = (s.storage.cql_write_consistency or s.storage.cql_consistency).upper()
    if s.links.region_durability == "sync" and level != "EACH_QUORUM":
        return ("CHATPLANE_REGION_DURABILITY=sync on a CQL keyspace shared by regions needs"
                f" CHATPLANE_CQL_WRITE_CONSISTENCY=EACH_QUORUM, not {level} (or durability"
                " async: acked once written in this region's datacenter)")
    return None


def load_cql(args: Any, command: str) -> Settings:
    """The settings of a storage command aimed at the CQL keyspace (`storage
    migrate`, `storage check`): the scylla backend, with the command line's
    hosts, keyspace and replication over the environment's."""
    overrides: dict[str, Any] = {"backend": "scylla"}
    for name in ("cql_hosts", "keyspace", "cql_replication"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = load({"storage": overrides})
    if not settings.storage.cql_hosts:
        raise SettingsError(f"{command} needs --cql-hosts or CHATPLANE_CQL_HOSTS")
    return settings
