"""Settings: one tree of dataclasses, read once at start and passed down.

Every field can come from the environment as CHATPLANE_<NAME> (the names the
operator sets) and, for the common ones, from command-line flags. A bad value
fails at start with one line that names the setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from chatplane.regions import peerlist


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
    group_max_share: float = 1.0  # of the process a busy large group's fan-out may take
    group_writer: int = 1  # 1: large-group frames written by a thread outside the GIL (gateway/bulk.py)
    group_writer_nice: int = 5  # that thread's priority below the event loop's (0-19)
    group_writer_idle: int = 0  # 1: that thread runs SCHED_IDLE (when a core would idle); 0: at nice
    hot_cache_messages: int = 100_000  # recent messages kept in memory (0: off)


@dataclass(frozen=True)
class Drain:
    rate: float = 500.0  # connections told to reconnect per second
    deadline_s: float = 60.0
    reconnect_delay_ms: int = 200


@dataclass(frozen=True)
class Storage:
    backend: str = "sqlite"
    data_dir: str = "./chatplane-data"
    sqlite_synchronous: str = "FULL"
    sqlite_shared: int = 0  # 1: other processes write the same file (cluster up)
    cql_hosts: str = ""
    keyspace: str = "chatplane"
    cql_consistency: str = "LOCAL_QUORUM"
    cql_datacenter: str = ""
    cql_replication: str = ""  # "3", "dc1=3,dc2=3" or a JSON map; applied by `storage migrate`
    cql_username: str = ""
    cql_password: str = ""
    redis_url: str = ""


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
    peers: str = ""  # JSON [{name, endpoint, datacenter}]: the other regions (regions.peerlist)
    peer_probe_s: float = 2.0  # how often each peer gets a Hello
    peer_timeout_s: float = 1.0  # the deadline of one Hello


@dataclass(frozen=True)
class Settings:
    server: Server = field(default_factory=Server)
    storage: Storage = field(default_factory=Storage)
    limits: Limits = field(default_factory=Limits)
    delivery: Delivery = field(default_factory=Delivery)
    drain: Drain = field(default_factory=Drain)
    social: Social = field(default_factory=Social)
    links: Links = field(default_factory=Links)


# Environment names that differ from CHATPLANE_<FIELD>.
ENV_ALIASES = {
    ("server", "http_port"): "CHATPLANE_HTTP_PORT",
    ("server", "advertise_url"): "CHATPLANE_GATEWAY_ADVERTISE_URL",
    ("storage", "backend"): "CHATPLANE_STORAGE",
    ("drain", "rate"): "CHATPLANE_DRAIN_RATE",
    ("drain", "deadline_s"): "CHATPLANE_DRAIN_DEADLINE_S",
}


def env_name(section: str, name: str) -> str:
    return ENV_ALIASES.get((section, name), f"CHATPLANE_{name.upper()}")


def _convert(section: str, name: str, kind: Any, raw: str) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
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
    if s.server.dev_login and s.server.host not in ("127.0.0.1", "localhost", "::1"):
        problems.append(f"dev_login signs tokens for anyone: loopback hosts only, not {s.server.host!r}")
    if s.storage.backend not in ("sqlite", "scylla"):
        problems.append(f"storage backend must be sqlite or scylla, not {s.storage.backend!r}")
    if s.limits.max_frame_bytes < 1024:
        problems.append("max_frame_bytes must be at least 1024")
    if s.limits.rate_limit_frames_per_s <= 0 or s.limits.rate_limit_burst <= 0:
        problems.append("rate limits must be positive")
    if s.drain.rate <= 0:
        problems.append("drain rate must be positive")
    if s.delivery.push_window < 1:
        problems.append("push_window must be at least 1")
    if not 0 < s.social.group_max_share <= 1:
        problems.append("group_max_share must be in (0, 1]")
    if s.social.group_writer not in (0, 1):
        problems.append("group_writer must be 0 or 1")
    if not 0 <= s.social.group_writer_nice <= 19:
        problems.append("group_writer_nice must be in 0..19")
    if s.social.group_writer_idle not in (0, 1):
        problems.append("group_writer_idle must be 0 or 1")
    if s.links.peer_probe_s <= 0 or s.links.peer_timeout_s <= 0:
        problems.append("peer_probe_s and peer_timeout_s must be positive")
    try:
        peerlist.parse(s.links.peers, s.server.region)
    except peerlist.PeerListError as exc:
        problems.append(f"CHATPLANE_PEERS: {exc}")
    redis_scheme = s.storage.redis_url.partition("://")[0]
    if s.storage.redis_url and redis_scheme not in ("redis", "rediss", "unix"):
        problems.append(f"redis_url must be redis://, rediss:// or unix://, not {s.storage.redis_url!r}")
    if problems:
        raise SettingsError("; ".join(problems))
