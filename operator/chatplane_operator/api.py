"""The ChatCluster API: spec dataclasses with their defaults, condition vocabulary, validate().

This module is the contract. `crd.py` generates the CustomResourceDefinition schema from the
defaults and messages defined here, `specs/` builds manifests from a parsed `ChatCluster`, and
`validate()` holds the rules that the CRD's CEL expressions enforce on the apiserver, with the
same messages, so a spec is judged the same way in process and in the cluster.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from chatplane_operator import apisecurity
from chatplane_operator.apisecurity import ISSUER_KINDS as ISSUER_KINDS
from chatplane_operator.apisecurity import KEY_ID as KEY_ID
from chatplane_operator.apisecurity import Auth as Auth
from chatplane_operator.apisecurity import IssuerRef as IssuerRef
from chatplane_operator.apisecurity import NetworkPolicy as NetworkPolicy
from chatplane_operator.apisecurity import Tls as Tls
from chatplane_operator.apisecurity import TlsFiles as TlsFiles

GROUP = "chatplane.dev"
VERSION = "v1alpha1"
KIND = "ChatCluster"
PLURAL = "chatclusters"
API_VERSION = f"{GROUP}/{VERSION}"

TIERS: tuple[str, ...] = ("ipconf", "gateway", "state", "im")
DURABILITIES: tuple[str, ...] = ("sync", "async")
CONSISTENCIES: tuple[str, ...] = (
    "ONE", "TWO", "THREE", "QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL", "LOCAL_ONE",
)
EXPOSE_TYPES: tuple[str, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
MAX_REGIONS = 16
MAX_CLUSTER_NAME = 26  # StatefulSet names must stay <= 52 characters
MAX_REGION_NAME = 16
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class ConditionType:
    """Condition types, in the metav1.Condition format."""

    READY = "Ready"
    REPLICATION_READY = "ReplicationReady"
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class Reason:
    """Condition and Event reasons (CamelCase, as Kubernetes wants them)."""

    ALL_READY = "AllTiersReady"
    NOT_READY = "TiersNotReady"
    AVAILABLE = "MinimumReplicasAvailable"
    UNAVAILABLE = "TierUnavailable"
    ROLLING_OUT = "RollingOut"
    UP_TO_DATE = "UpToDate"
    AS_EXPECTED = "AsExpected"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    APPLY_FAILED = "ApplyFailed"
    INVALID_SPEC = "InvalidSpec"
    REGION_DEGRADED = "RegionDegraded"
    APPLIED = "Applied"
    SECRET_GENERATED = "SecretGenerated"
    RECOVERED = "Recovered"
    ROLLOUT_PAUSED = "RolloutPaused"
    REPLICATION_WIRED = "ReplicationWired"
    REPLICATION_IN_SYNC = "ReplicationInSync"
    REPLICATION_LAGGING = "ReplicationLagging"
    MIGRATION_PENDING = "MigrationPending"
    REGION_NOT_WIRED = "RegionNotWired"
    PEERS_REACHABLE = "PeersReachable"
    PEER_UNREACHABLE = "PeerUnreachable"
    PEER_MISMATCH = "PeerMismatch"
    PEER_REPORT_MISSING = "PeerReportMissing"
    GATEWAY_DRAINING = "GatewayDraining"
    GATEWAY_REPLACED = "GatewayReplaced"
    CERTIFICATE_ISSUED = "CertificateIssued"
    TOKEN_KEYS_ROTATED = "TokenKeysRotated"
    MIGRATION_RUNNING = "MigrationRunning"
    MIGRATION_FAILED = "MigrationFailed"
    PODS_UNSCHEDULABLE = "PodsUnschedulable"


class Message:
    """Human messages shared by `validate()` and the CRD's CEL rules."""

    DUPLICATE_REGION = "region names must be unique within a ChatCluster"
    DUPLICATE_DATACENTER = "region datacenters must be unique within a ChatCluster"
    DATACENTER_IMMUTABLE = (
        "a region's datacenter cannot be changed: its keyspace replicas live in the old "
        "one; add a region for the new datacenter instead"
    )
    NO_REGION = "a ChatCluster needs at least one region"
    RENAMED_REGION = (
        "regions cannot be renamed in place: add the region under its new name, then "
        "remove the old one"
    )
    KEYSPACE_IMMUTABLE = (
        "storage.keyspace cannot be changed in place: the data lives in the old keyspace; "
        "migrate it and create a new ChatCluster"
    )
    NO_GATEWAY = "a region needs at least one gateway replica (tiers.gateway.replicas >= 1)"
    TIER_REPLICAS = "tier replicas must be >= 1: every region runs every tier"
    DRAIN_RATE = "upgrade.drainRate must be > 0 connections per second"
    DRAIN_DEADLINE = "upgrade.drainDeadlineSeconds must be between 1 and 3600"
    CLUSTER_NAME = f"a ChatCluster name must be at most {MAX_CLUSTER_NAME} characters"
    REGION_NAME = (
        f"a region name must be a DNS label (a-z, 0-9, '-') of at most {MAX_REGION_NAME} "
        "characters"
    )
    NO_CQL_HOSTS = "regions[].cql.hosts needs at least one CQL contact point"
    REPLICATION = "regions[].cql.replicationFactor must be between 0 and 9"
    PEER_REPLICATION = "peers[].replicationFactor must be between 0 and 9"
    NO_REPLICAS = "at least one region or peer needs cql.replicationFactor >= 1"
    PEER_NAME = "peer names must be unique and differ from every region name"
    PEER_DATACENTER = "peer datacenters must be unique and differ from every region's"
    PEERS_NEED_TOKEN_SECRET = (
        "with peers (regions run by other ChatClusters) the token signing key must be shared: "
        "set auth.tokenSecretRef to a Secret the platform provides in every cluster"
    )
    PORTS_DISTINCT = "ports.http, ports.tcp, ports.grpc and ports.admin must all differ"
    CERT_LIFETIME = "tls.certificateLifetimeHours must be between 24 and 87600"
    ISSUER_WITHOUT_TLS = "tls.issuerRef needs tls.enabled: true"
    SIGNING_KEY_ID = (
        "auth.signingKeyId must be 1-32 characters of a-z, A-Z, 0-9, '_' or '-'"
    )
    SIGNING_KEY_WITH_SECRET_REF = (
        "auth.signingKeyId (key rotation by the operator) cannot be combined with "
        "auth.tokenSecretRef: the operator can only rotate keys it keeps itself"
    )
    TOKEN_TTL = "auth.tokenTTLSeconds must be between 60 and 2592000"
    SIGNING_KEY_REMOVED = (
        "auth.signingKeyId cannot be removed once set: tokens signed with the operator's keys "
        "would stop verifying; rotate to another id instead"
    )
    PEER_CIDR = "peers[].cidrs must be IP networks in CIDR form, e.g. 10.8.0.0/16"
    DURABILITY = "replication.durability must be sync or async"
    REPLICATION_BOUNDS = (
        "replication.maxLagEntries must be >= 0 and replication.maxSilenceSeconds between "
        "2 and 3600"
    )
    REMOVED_WITH_REPLICAS = (
        "a region or peer cannot be removed while the keyspace keeps replicas in its "
        "datacenter: set its replicationFactor to 0 first, wait until status.storage.migrated "
        "is true, then remove it"
    )


class SpecError(ValueError):
    """A spec that the CRD's rules refuse; `messages` lists every broken rule."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


@dataclasses.dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclasses.dataclass(frozen=True)
class Resources:
    requests: dict[str, str] = dataclasses.field(default_factory=dict)
    limits: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Tier:
    replicas: int = 2
    resources: Resources = dataclasses.field(default_factory=Resources)


@dataclasses.dataclass(frozen=True)
class Placement:
    region_label: str = "topology.kubernetes.io/region"
    region_value: str = ""  # empty: the region's name
    zone_label: str = "topology.kubernetes.io/zone"


@dataclasses.dataclass(frozen=True)
class GatewayExposure:
    type: str = "LoadBalancer"
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    advertise_url: str = ""  # empty: the pod's DNS name behind the headless Service
    advertise_tcp: str = ""  # host:port; empty: the pod's DNS name and the TCP port


@dataclasses.dataclass(frozen=True)
class Cql:
    hosts: tuple[str, ...] = ()
    replication_factor: int = 3


@dataclasses.dataclass(frozen=True)
class Region:
    name: str
    datacenter: str
    placement: Placement
    tiers: dict[str, Tier]
    gateway: GatewayExposure
    redis: SecretKeyRef
    cql: Cql


@dataclasses.dataclass(frozen=True)
class Peer:
    """A region run by another ChatCluster: dialed cross-region, replicated to by CQL."""

    name: str
    endpoint: str
    datacenter: str
    replication_factor: int = 3
    cidrs: tuple[str, ...] = ()  # where its pods dial from: allowed to the gRPC port


@dataclasses.dataclass(frozen=True)
class Image:
    repository: str = "ghcr.io/chatplane/chatplane"
    version: str = "0.1.0"
    pull_policy: str = "IfNotPresent"
    pull_secrets: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.version}"


@dataclasses.dataclass(frozen=True)
class CqlCredentials:
    name: str
    username_key: str = "username"
    password_key: str = "password"


@dataclasses.dataclass(frozen=True)
class ArchiveS3:
    """The bucket the cold archive's segments go to (pods have no disk that lasts)."""
    endpoint: str
    bucket: str
    credentials: str  # the Secret holding the access key and the secret key
    access_key_key: str = "accessKey"
    secret_key_key: str = "secretKey"
    region: str = "us-east-1"
    prefix: str = ""


@dataclasses.dataclass(frozen=True)
class Archive:
    """The cold tier (docs/storage.md, "Archive"): off unless `storage.archive` is set."""
    s3: ArchiveS3
    after_days: float = 30.0
    interval_seconds: int = 3600
    retention_days_direct: float = 0.0  # 0: archived content is kept
    retention_days_group: float = 0.0
    retention_days_events: float = 0.0


@dataclasses.dataclass(frozen=True)
class Storage:
    keyspace: str = "chatplane"
    consistency: str = "LOCAL_QUORUM"
    credentials: CqlCredentials | None = None
    archive: Archive | None = None


@dataclasses.dataclass(frozen=True)
class Limits:
    large_group_threshold: int = 500
    max_frame_bytes: int = 65536
    rate_limit_frames_per_second: int = 50


@dataclasses.dataclass(frozen=True)
class Upgrade:
    drain_rate: int = 100
    drain_deadline_seconds: int = 300
    max_unavailable: int = 1
    ready_timeout_seconds: int = 300


@dataclasses.dataclass(frozen=True)
class Ports:
    http: int = 8080
    tcp: int = 8081
    grpc: int = 9090
    admin: int = 9091  # admin API, /metrics, /admin/drain: never on the public Service


@dataclasses.dataclass(frozen=True)
class Observability:
    otlp_endpoint: str = ""
    trace_sample_ratio: float = 1.0  # share of requests traced (CHATPLANE_TRACE_SAMPLE_RATIO)
    metrics: bool = True


@dataclasses.dataclass(frozen=True)
class Replication:
    """When `ReplicationReady` holds: the most a region may trail a peer's replicated log
    (docs/operator.md, "Replication across regions and clusters")."""

    max_lag_entries: int = 1000  # the peer's log positions not applied yet
    # the longest without a batch from the peer: a healthy stream carries one (or a
    # heartbeat) every second and is reopened after 3 s of silence
    max_silence_seconds: int = 10
    # when a send is acked: "sync" once it is durable in its home region and one more,
    # "async" on the home's local durability (docs/architecture.md, "Durability modes")
    durability: str = "sync"


@dataclasses.dataclass(frozen=True)
class ChatCluster:
    """A parsed ChatCluster: metadata the builders need plus the defaulted spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    image: Image
    regions: tuple[Region, ...]
    storage: Storage
    limits: Limits
    upgrade: Upgrade
    ports: Ports
    observability: Observability
    token_secret: SecretKeyRef | None = None  # None: a generated Secret holds it
    peers: tuple[Peer, ...] = ()
    tls: Tls = dataclasses.field(default_factory=Tls)
    network_policy: NetworkPolicy = dataclasses.field(default_factory=NetworkPolicy)
    auth: Auth = dataclasses.field(default_factory=Auth)
    replication: Replication = dataclasses.field(default_factory=Replication)
    # Not from the spec: the token key ids the key Secret holds now, first signs (filled in
    # by the reconciler; they go into the config hash, so a key change rolls the pods).
    token_kids: tuple[str, ...] = ()

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)


def _get(d: Mapping[str, Any], key: str, default: Any) -> Any:
    value = d.get(key)
    return default if value is None else value


def _ref(d: Mapping[str, Any] | None, default_key: str) -> SecretKeyRef | None:
    if not d:
        return None
    return SecretKeyRef(name=str(d["name"]), key=str(_get(d, "key", default_key)))


def _tier(d: Mapping[str, Any], tier: str) -> Tier:
    res = _get(d, "resources", {})
    default = DEFAULT_REPLICAS[tier]
    return Tier(
        replicas=int(_get(d, "replicas", default)),
        resources=Resources(
            requests=dict(_get(res, "requests", {})), limits=dict(_get(res, "limits", {}))
        ),
    )


DEFAULT_REPLICAS: dict[str, int] = {"ipconf": 2, "gateway": 3, "state": 2, "im": 2}


def _region(d: Mapping[str, Any]) -> Region:
    name = str(d["name"])
    pl = _get(d, "placement", {})
    gw = _get(d, "gateway", {})
    expose = _get(gw, "expose", {})
    cql = _get(d, "cql", {})
    tiers = _get(d, "tiers", {})
    redis = _ref(_get(d, "redis", {}).get("urlSecretRef"), "url")
    return Region(
        name=name,
        datacenter=str(_get(d, "datacenter", name)),
        placement=Placement(
            region_label=str(_get(pl, "regionLabel", Placement.region_label)),
            region_value=str(_get(pl, "regionValue", name)),
            zone_label=str(_get(pl, "zoneLabel", Placement.zone_label)),
        ),
        tiers={t: _tier(_get(tiers, t, {}), t) for t in TIERS},
        gateway=GatewayExposure(
            type=str(_get(expose, "type", GatewayExposure.type)),
            annotations=dict(_get(expose, "annotations", {})),
            advertise_url=str(_get(gw, "advertiseURL", "")),
            advertise_tcp=str(_get(gw, "advertiseTCP", "")),
        ),
        redis=redis or SecretKeyRef(name="", key="url"),
        cql=Cql(
            hosts=tuple(str(h) for h in _get(cql, "hosts", [])),
            replication_factor=int(_get(cql, "replicationFactor", Cql.replication_factor)),
        ),
    )


def _archive(d: Mapping[str, Any] | None) -> Archive | None:
    if not d:
        return None
    s3 = _get(d, "s3", {})
    creds = _get(s3, "credentialsSecretRef", {})
    retention = _get(d, "retentionDays", {})
    return Archive(
        s3=ArchiveS3(
            endpoint=str(_get(s3, "endpoint", "")),
            bucket=str(_get(s3, "bucket", "")),
            credentials=str(_get(creds, "name", "")),
            access_key_key=str(_get(creds, "accessKeyKey", ArchiveS3.access_key_key)),
            secret_key_key=str(_get(creds, "secretKeyKey", ArchiveS3.secret_key_key)),
            region=str(_get(s3, "region", ArchiveS3.region)),
            prefix=str(_get(s3, "prefix", ArchiveS3.prefix)),
        ),
        after_days=float(_get(d, "afterDays", Archive.after_days)),
        interval_seconds=int(_get(d, "intervalSeconds", Archive.interval_seconds)),
        retention_days_direct=float(_get(retention, "direct", 0)),
        retention_days_group=float(_get(retention, "group", 0)),
        retention_days_events=float(_get(retention, "events", 0)),
    )


def parse(body: Mapping[str, Any]) -> ChatCluster:
    """Parse a ChatCluster object (as the apiserver returns it) and fill in the defaults."""
    meta = body.get("metadata", {})
    spec = body.get("spec", {})
    image = _get(spec, "image", {})
    storage = _get(spec, "storage", {})
    creds = storage.get("credentialsSecretRef")
    limits = _get(spec, "limits", {})
    upgrade = _get(spec, "upgrade", {})
    ports = _get(spec, "ports", {})
    obs = _get(spec, "observability", {})
    return ChatCluster(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "default")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 1)),
        image=Image(
            repository=str(_get(image, "repository", Image.repository)),
            version=str(_get(image, "version", Image.version)),
            pull_policy=str(_get(image, "pullPolicy", Image.pull_policy)),
            pull_secrets=tuple(str(s) for s in _get(image, "pullSecrets", [])),
        ),
        regions=tuple(_region(r) for r in _get(spec, "regions", [])),
        storage=Storage(
            keyspace=str(_get(storage, "keyspace", Storage.keyspace)),
            consistency=str(_get(storage, "consistency", Storage.consistency)),
            credentials=CqlCredentials(
                name=str(creds["name"]),
                username_key=str(_get(creds, "usernameKey", "username")),
                password_key=str(_get(creds, "passwordKey", "password")),
            ) if creds else None,
            archive=_archive(storage.get("archive")),
        ),
        limits=Limits(
            large_group_threshold=int(_get(limits, "largeGroupThreshold", 500)),
            max_frame_bytes=int(_get(limits, "maxFrameBytes", 65536)),
            rate_limit_frames_per_second=int(_get(limits, "rateLimitFramesPerSecond", 50)),
        ),
        upgrade=Upgrade(
            drain_rate=int(_get(upgrade, "drainRate", Upgrade.drain_rate)),
            drain_deadline_seconds=int(
                _get(upgrade, "drainDeadlineSeconds", Upgrade.drain_deadline_seconds)
            ),
            max_unavailable=int(_get(upgrade, "maxUnavailable", Upgrade.max_unavailable)),
            ready_timeout_seconds=int(
                _get(upgrade, "readyTimeoutSeconds", Upgrade.ready_timeout_seconds)),
        ),
        ports=Ports(
            http=int(_get(ports, "http", 8080)),
            tcp=int(_get(ports, "tcp", 8081)),
            grpc=int(_get(ports, "grpc", 9090)),
            admin=int(_get(ports, "admin", Ports.admin)),
        ),
        observability=Observability(
            otlp_endpoint=str(_get(obs, "otlpEndpoint", "")),
            trace_sample_ratio=float(_get(obs, "traceSampleRatio",
                                          Observability.trace_sample_ratio)),
            metrics=bool(_get(_get(obs, "metrics", {}), "enabled", True)),
        ),
        token_secret=_ref(_get(spec, "auth", {}).get("tokenSecretRef"), "token"),
        peers=tuple(Peer(name=str(p["name"]), endpoint=str(p.get("endpoint", "")),
                         datacenter=str(_get(p, "datacenter", p["name"])),
                         replication_factor=int(_get(p, "replicationFactor", 3)),
                         cidrs=tuple(str(c) for c in _get(p, "cidrs", [])))
                    for p in _get(spec, "peers", [])),
        tls=apisecurity.parse_tls(_get(spec, "tls", {})),
        network_policy=apisecurity.parse_network_policy(_get(spec, "networkPolicy", {})),
        auth=apisecurity.parse_auth(_get(spec, "auth", {})),
        replication=_replication(_get(spec, "replication", {})),
    )


def _replication(d: Mapping[str, Any]) -> Replication:
    return Replication(
        max_lag_entries=int(_get(d, "maxLagEntries", Replication.max_lag_entries)),
        max_silence_seconds=int(_get(d, "maxSilenceSeconds", Replication.max_silence_seconds)),
        durability=str(_get(d, "durability", Replication.durability)))


def _peer_errors(cluster: ChatCluster) -> list[str]:
    errors: list[str] = []
    names = [r.name for r in cluster.regions]
    dcs = [r.datacenter for r in cluster.regions]
    peer_names = [p.name for p in cluster.peers]
    peer_dcs = [p.datacenter for p in cluster.peers]
    if len(set(peer_names)) != len(peer_names) or set(peer_names) & set(names):
        errors.append(Message.PEER_NAME)
    if len(set(peer_dcs)) != len(peer_dcs) or set(peer_dcs) & set(dcs):
        errors.append(Message.PEER_DATACENTER)
    if any(not 0 <= p.replication_factor <= 9 for p in cluster.peers):
        errors.append(Message.PEER_REPLICATION)
    if cluster.regions and not any(r.cql.replication_factor for r in cluster.regions) \
            and not any(p.replication_factor for p in cluster.peers):
        errors.append(Message.NO_REPLICAS)
    if cluster.peers and cluster.token_secret is None:
        errors.append(Message.PEERS_NEED_TOKEN_SECRET)
    for peer in cluster.peers:
        for cidr in peer.cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                errors.append(Message.PEER_CIDR)
    return errors


def _security_errors(cluster: ChatCluster) -> list[str]:
    """Ports, TLS and token keys."""
    errors: list[str] = []
    p = cluster.ports
    if len({p.http, p.tcp, p.grpc, p.admin}) != 4:
        errors.append(Message.PORTS_DISTINCT)
    if not 24 <= cluster.tls.lifetime_hours <= 87600:
        errors.append(Message.CERT_LIFETIME)
    if cluster.tls.issuer is not None and not cluster.tls.enabled:
        errors.append(Message.ISSUER_WITHOUT_TLS)
    kid = cluster.auth.signing_key_id
    if kid and not KEY_ID.match(kid):
        errors.append(Message.SIGNING_KEY_ID)
    if kid and cluster.token_secret is not None:
        errors.append(Message.SIGNING_KEY_WITH_SECRET_REF)
    if not 60 <= cluster.auth.token_ttl_seconds <= 2592000:
        errors.append(Message.TOKEN_TTL)
    return errors


def validate(cluster: ChatCluster, old: ChatCluster | None = None) -> None:
    """Raise `SpecError` listing every rule the spec breaks (the CRD's CEL rules, in Python).

    `old` is the previous spec on an update, for the transition rules (no renames in place).
    """
    errors: list[str] = []
    if len(cluster.name) > MAX_CLUSTER_NAME:
        errors.append(Message.CLUSTER_NAME)
    names = [r.name for r in cluster.regions]
    if not names:
        errors.append(Message.NO_REGION)
    if len(set(names)) != len(names):
        errors.append(Message.DUPLICATE_REGION)
    dcs = [r.datacenter for r in cluster.regions]
    if len(set(dcs)) != len(dcs):
        errors.append(Message.DUPLICATE_DATACENTER)
    for region in cluster.regions:
        if len(region.name) > MAX_REGION_NAME or not DNS_LABEL.match(region.name):
            errors.append(Message.REGION_NAME)
        if region.tiers["gateway"].replicas < 1:
            errors.append(Message.NO_GATEWAY)
        if any(region.tiers[t].replicas < 1 for t in TIERS if t != "gateway"):
            errors.append(Message.TIER_REPLICAS)
        if not region.cql.hosts:
            errors.append(Message.NO_CQL_HOSTS)
        if not 0 <= region.cql.replication_factor <= 9:
            errors.append(Message.REPLICATION)
    errors += _peer_errors(cluster)
    errors += _security_errors(cluster)
    bounds = cluster.replication
    if bounds.max_lag_entries < 0 or not 2 <= bounds.max_silence_seconds <= 3600:
        errors.append(Message.REPLICATION_BOUNDS)
    if bounds.durability not in DURABILITIES:
        errors.append(Message.DURABILITY)
    if cluster.upgrade.drain_rate <= 0:
        errors.append(Message.DRAIN_RATE)
    if not 1 <= cluster.upgrade.drain_deadline_seconds <= 3600:
        errors.append(Message.DRAIN_DEADLINE)
    if old is not None:
        if old.storage.keyspace != cluster.storage.keyspace:
            errors.append(Message.KEYSPACE_IMMUTABLE)
        old_dcs = {r.name: r.datacenter for r in old.regions}
        if any(old_dcs.get(r.name, r.datacenter) != r.datacenter for r in cluster.regions):
            errors.append(Message.DATACENTER_IMMUTABLE)
        old_names = {r.name for r in old.regions}
        if len(old_names) == len(set(names)) and old_names != set(names):
            errors.append(Message.RENAMED_REGION)
        # a region may become a peer (another cluster takes it over) and back
        kept = set(names) | {p.name for p in cluster.peers}
        held = [r.name for r in old.regions if r.cql.replication_factor > 0]
        held += [p.name for p in old.peers if p.replication_factor > 0]
        if any(name not in kept for name in held):
            errors.append(Message.REMOVED_WITH_REPLICAS)
        if old.auth.signing_key_id and not cluster.auth.signing_key_id:
            errors.append(Message.SIGNING_KEY_REMOVED)
    if errors:
        raise SpecError(list(dict.fromkeys(errors)))
