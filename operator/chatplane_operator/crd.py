"""The ChatCluster CustomResourceDefinition, generated from `api` (defaults, limits, messages).

`python -m chatplane_operator.crd` prints it as YAML; `crds/` and `charts/chatplane/crds/`
hold that output, and a test keeps them equal to it. The CEL rules here mirror
`api.validate()` and use the same messages.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from chatplane_operator import api

Schema = dict[str, Any]


def _str(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _int(description: str, default: int | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "integer", "description": description, **extra}
    if default is not None:
        out["default"] = default
    return out


def _obj(description: str, props: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "description": description, "properties": props, **extra}


def _filled(schema: Schema) -> Any:
    """The default of `schema` with every nested default filled in (the apiserver checks
    CEL rules against defaults as written, without defaulting inside them)."""
    if schema.get("type") != "object" or "properties" not in schema:
        return schema.get("default")
    out = {}
    for key, sub in schema["properties"].items():
        if "default" in sub:
            value = _filled(sub)
            if value is not None:
                out[key] = value
    return out


def _fill_defaults(schema: Schema) -> Schema:
    """Replace every `default: {}` in the tree with its filled-in form."""
    for sub in (schema.get("properties") or {}).values():
        _fill_defaults(sub)
    if isinstance(schema.get("items"), dict):
        _fill_defaults(schema["items"])
    if schema.get("default") == {} and "properties" in schema:
        schema["default"] = _filled(schema)
    return schema


def _rule(rule: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"rule": rule, "message": message, **extra}


def _secret_ref(description: str, default_key: str) -> Schema:
    return _obj(description, {
        "name": _str("Name of a Secret in the ChatCluster's namespace.", maxLength=253),
        "key": _str("Key inside the Secret.", default=default_key, maxLength=253),
    }, required=["name"])


def _days(description: str, default: float) -> Schema:
    return {"type": "number", "minimum": 0, "maximum": 36500, "default": default,
            "description": description}


def _archive() -> Schema:
    return _obj("The cold archive: messages older than afterDays are compacted into "
                "compressed segments in an S3-compatible bucket (docs/storage.md, "
                "\"Archive\"). Absent: nothing is archived.", {
        "afterDays": _days("Messages older than this are archived (0: never).",
                           api.Archive.after_days),
        "intervalSeconds": _int("Between two archiving runs of each im pod.",
                                api.Archive.interval_seconds, minimum=60, maximum=604800),
        "retentionDays": _obj("Archived content is deleted after this many days, per kind "
                              "of conversation (0: kept).", {
            "direct": _days("1:1 chats.", 0),
            "group": _days("Groups.", 0),
            "events": _days("Event conversations.", 0),
        }, default={}),
        "s3": _obj("The bucket (it must exist; the im pods list it at start).", {
            "endpoint": _str("http(s)://host[:port] of the S3-compatible service.",
                             pattern="^https?://[^/?#]+$", maxLength=253),
            "bucket": _str("Bucket name.", pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
            "region": _str("Signing region.", default=api.ArchiveS3.region, maxLength=63),
            "prefix": _str("Object names start with it (several clusters, one bucket).",
                           default="", maxLength=200),
            "credentialsSecretRef": _obj("Secret with the static keys.", {
                "name": _str("Secret name.", maxLength=253),
                "accessKeyKey": _str("Key of the access key id.",
                                     default=api.ArchiveS3.access_key_key),
                "secretKeyKey": _str("Key of the secret access key.",
                                     default=api.ArchiveS3.secret_key_key),
            }, required=["name"]),
        }, required=["endpoint", "bucket", "credentialsSecretRef"]),
    }, required=["s3"])


_QUANTITIES: Schema = {
    "type": "object",
    "additionalProperties": {"x-kubernetes-int-or-string": True, "anyOf": [
        {"type": "integer"}, {"type": "string"}]},
}


def _tier(tier: str) -> Schema:
    default = api.DEFAULT_REPLICAS[tier]
    return _obj(f"The {tier} tier of this region.", {
        "replicas": _int(f"Pods of the {tier} tier in this region.", default, minimum=0,
                         maximum=1000),
        "resources": _obj("Container resources (requests and limits, as in a Pod).", {
            "requests": {**_QUANTITIES, "description": "Requested cpu and memory."},
            "limits": {**_QUANTITIES, "description": "Limits on cpu and memory."},
        }),
    }, default={})


def _region() -> Schema:
    tier_rules = [
        _rule("self.gateway.replicas >= 1", api.Message.NO_GATEWAY),
        _rule("self.ipconf.replicas >= 1 && self.state.replicas >= 1 && self.im.replicas >= 1",
              api.Message.TIER_REPLICAS),
    ]
    return _obj("One region: a full stack of every tier, with its own Redis and CQL datacenter.", {
        "name": _str("Region name, a DNS label; part of every object's name. Immutable.",
                     minLength=1, maxLength=api.MAX_REGION_NAME, pattern=api.DNS_LABEL.pattern),
        "datacenter": _str("CQL datacenter of this region (default: the region name).",
                           maxLength=63),
        "placement": _obj("Where the region's pods run.", {
            "regionLabel": _str("Node label that names the region; empty: no node selector.",
                                default=api.Placement.region_label, maxLength=253),
            "regionValue": _str("Value of regionLabel on this region's nodes (default: the "
                                "region name).", maxLength=63),
            "zoneLabel": _str("Node label pods are spread over (topology spread).",
                              default=api.Placement.zone_label, maxLength=253),
        }, default={}),
        "tiers": _obj("Replicas and resources per tier.",
                      {t: _tier(t) for t in api.TIERS}, default={},
                      **{"x-kubernetes-validations": tier_rules}),
        "gateway": _obj("How clients reach the gateways.", {
            "expose": _obj("The Service in front of the gateways.", {
                "type": _str("Service type.", enum=list(api.EXPOSE_TYPES),
                             default=api.GatewayExposure.type),
                "annotations": {"type": "object", "description": "Service annotations.",
                                "additionalProperties": {"type": "string"}},
            }, default={}),
            "advertiseURL": _str("WebSocket URL that ipconf hands to clients for a gateway pod; "
                                 "$(POD_NAME) expands to the pod name. Default: the pod's DNS "
                                 "name behind the headless Service.", maxLength=512),
            "advertiseTCP": _str("host:port that ipconf hands to clients for a gateway pod's "
                                 "raw TCP port (tcps:// when TLS is on); $(POD_NAME) expands "
                                 "to the pod name. Default: the pod's DNS name behind the "
                                 "headless Service and the TCP port.", maxLength=512,
                                 pattern=r"^[^/:]+:[0-9]{1,5}$"),
        }, default={}),
        "redis": _obj("This region's Redis.", {
            "urlSecretRef": _secret_ref("Secret key holding the redis:// URL.", "url"),
        }, required=["urlSecretRef"]),
        "cql": _obj("This region's CQL (ScyllaDB) datacenter.", {
            "hosts": {"type": "array", "description": "Contact points (host or host:port).",
                      "items": {"type": "string", "maxLength": 253}, "maxItems": 32},
            "replicationFactor": _int("Replicas of the keyspace in this datacenter.",
                                      api.Cql.replication_factor),
        }, **{"x-kubernetes-validations": [
            _rule("has(self.hosts) && size(self.hosts) >= 1", api.Message.NO_CQL_HOSTS),
            _rule("self.replicationFactor >= 0 && self.replicationFactor <= 9",
                  api.Message.REPLICATION),
        ]}),
    }, required=["name", "redis", "cql"], **{"x-kubernetes-validations": [
        _rule(f"{_DC.format('self')} == {_DC.format('oldSelf')}",
              api.Message.DATACENTER_IMMUTABLE)]})


def _spec() -> Schema:
    regions = {
        "type": "array", "description": "The regions; every region runs every tier.",
        "items": _region(), "maxItems": api.MAX_REGIONS,
        # a list-map keyed by name: per-item transition rules compare a region with itself
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "x-kubernetes-validations": [
            _rule("size(self) >= 1", api.Message.NO_REGION),
            _rule("self.all(r, self.exists_one(o, o.name == r.name))",
                  api.Message.DUPLICATE_REGION),
            _rule("self.all(r, self.exists_one(o, (has(o.datacenter) ? o.datacenter : o.name)"
                  " == (has(r.datacenter) ? r.datacenter : r.name)))",
                  api.Message.DUPLICATE_DATACENTER),
            _rule("size(self) != size(oldSelf) || self.all(r, oldSelf.exists(o, o.name == "
                  "r.name))", api.Message.RENAMED_REGION),
        ],
    }
    return _obj("Desired state of a chat cluster.", {
        "image": _obj("The chatplane image every tier runs.", {
            "repository": _str("Image repository.", default=api.Image.repository),
            "version": _str("Image tag: the chatplane version.", default=api.Image.version),
            "pullPolicy": _str("Image pull policy.", default=api.Image.pull_policy,
                               enum=["Always", "IfNotPresent", "Never"]),
            "pullSecrets": {"type": "array", "description": "Image pull Secret names.",
                            "items": {"type": "string"}},
        }, default={}),
        "regions": regions,
        "storage": _obj("The CQL keyspace shared by every region.", {
            "keyspace": _str("Keyspace name. Immutable.", default=api.Storage.keyspace,
                             pattern="^[a-z][a-z0-9_]{0,47}$", **{"x-kubernetes-validations": [
                                 _rule("self == oldSelf", api.Message.KEYSPACE_IMMUTABLE)]}),
            "consistency": _str("CQL consistency level.", default=api.Storage.consistency,
                                enum=list(api.CONSISTENCIES)),
            "credentialsSecretRef": _obj("Secret with CQL credentials (optional).", {
                "name": _str("Secret name.", maxLength=253),
                "usernameKey": _str("Key of the user name.", default="username"),
                "passwordKey": _str("Key of the password.", default="password"),
            }, required=["name"]),
            "archive": _archive(),
        }, default={}),
        "peers": _peers(),
        "replication": _obj("When ReplicationReady holds: how far behind a region may apply "
                            "a peer's replicated log (reported by data planes that replicate "
                            "their own log; a multi-datacenter keyspace replicates in the "
                            "database).", {
            "maxLagEntries": _int("Most log positions of a peer not yet applied in a region.",
                                  api.Replication.max_lag_entries),
            "maxSilenceSeconds": _int("Longest a region may go without a batch (or heartbeat) "
                                      "of a peer's log; a healthy stream brings one every "
                                      "second.", api.Replication.max_silence_seconds),
            "durability": _str("When a send is acked: sync once it is durable in its home "
                               "region and in one more (losing a region loses nothing acked; "
                               "on the shared keyspace the data plane writes at EACH_QUORUM), "
                               "async on the home's local durability (a lost region loses what "
                               "it had not replicated yet).", enum=list(api.DURABILITIES),
                               default=api.Replication.durability),
        }, default={}, **{"x-kubernetes-validations": [
            _rule("self.maxLagEntries >= 0 && self.maxSilenceSeconds >= 2 && "
                  "self.maxSilenceSeconds <= 3600", api.Message.REPLICATION_BOUNDS)]}),
        "auth": _obj("Token signing. Without tokenSecretRef a Secret is generated once.", {
            "tokenSecretRef": _secret_ref("Secret key holding the token signing key, shared by "
                                          "every region.", "token"),
            "signingKeyId": _str("Key id that signs tokens; changing it rotates the key without "
                                 "logging anyone out: the new key verifies everywhere first, "
                                 "then signs, and the old one is dropped after tokenTTLSeconds. "
                                 "Empty: one key (k0), no rotation.", maxLength=32,
                                 **{"x-kubernetes-validations": [_rule(
                                     "self == '' || self.matches('^[A-Za-z0-9_-]{1,32}$')",
                                     api.Message.SIGNING_KEY_ID)]}),
            "tokenTTLSeconds": _int("How long an old key keeps verifying after a rotation: "
                                    "at least the longest token lifetime.",
                                    api.Auth.token_ttl_seconds),
        }, default={}, **{"x-kubernetes-validations": [
            _rule("!has(self.signingKeyId) || self.signingKeyId == '' || "
                  "!has(self.tokenSecretRef)", api.Message.SIGNING_KEY_WITH_SECRET_REF),
            _rule("self.tokenTTLSeconds >= 60 && self.tokenTTLSeconds <= 2592000",
                  api.Message.TOKEN_TTL),
            _rule("!has(oldSelf.signingKeyId) || oldSelf.signingKeyId == '' || "
                  "(has(self.signingKeyId) && self.signingKeyId != '')",
                  api.Message.SIGNING_KEY_REMOVED),
        ]}),
        "limits": _obj("Data-plane limits.", {
            "largeGroupThreshold": _int("Members above which a group uses read diffusion.",
                                        api.Limits.large_group_threshold, minimum=2),
            "maxFrameBytes": _int("Largest frame a gateway accepts.",
                                  api.Limits.max_frame_bytes, minimum=1024),
            "rateLimitFramesPerSecond": _int("Frames per second a connection may send.",
                                             api.Limits.rate_limit_frames_per_second,
                                             minimum=1),
        }, default={}),
        "upgrade": _obj("How gateways drain on upgrade and eviction.", {
            "drainRate": _int("Connections per second a draining gateway sends away.",
                              api.Upgrade.drain_rate),
            "drainDeadlineSeconds": _int("Longest a drain may take; also sets the gateways' "
                                         "termination grace period.",
                                         api.Upgrade.drain_deadline_seconds),
            "maxUnavailable": _int("Pods per tier that may be down at once (rollouts, PDBs).",
                                   api.Upgrade.max_unavailable, minimum=1),
            "readyTimeoutSeconds": _int("A new gateway pod not ready this long after it was "
                                        "created pauses the drain rollout (Degraded, "
                                        "RolloutPaused) until it is ready.",
                                        api.Upgrade.ready_timeout_seconds, minimum=1,
                                        maximum=86400),
        }, default={}, **{"x-kubernetes-validations": [
            _rule("self.drainRate > 0", api.Message.DRAIN_RATE),
            _rule("self.drainDeadlineSeconds >= 1 && self.drainDeadlineSeconds <= 3600",
                  api.Message.DRAIN_DEADLINE),
        ]}),
        "ports": _obj("Container ports of the tiers.", {
            "http": _int("HTTP: health, metrics, admin, gateway WebSocket.", api.Ports.http,
                         minimum=1024, maximum=65535),
            "tcp": _int("Gateway raw TCP.", api.Ports.tcp, minimum=1024, maximum=65535),
            "grpc": _int("gRPC of state and im.", api.Ports.grpc, minimum=1024, maximum=65535),
            "admin": _int("Admin API, /metrics and /admin/drain of every tier (needs the admin "
                          "secret). Never on the public Service.", api.Ports.admin,
                          minimum=1024, maximum=65535),
        }, default={}, **{"x-kubernetes-validations": [
            _rule("self.http != self.tcp && self.http != self.grpc && self.http != self.admin && "
                  "self.tcp != self.grpc && self.tcp != self.admin && self.grpc != self.admin",
                  api.Message.PORTS_DISTINCT)]}),
        "tls": _tls(),
        "networkPolicy": _network_policy(),
        "observability": _obj("Traces and metrics.", {
            "otlpEndpoint": _str("OpenTelemetry OTLP endpoint; empty: no traces."),
            "traceSampleRatio": {
                "type": "number", "minimum": 0, "maximum": 1,
                "default": api.Observability.trace_sample_ratio,
                "description": "Share of requests traced (parent-based: a traced request is "
                               "traced in every tier it crosses)."},
            "metrics": _obj("Prometheus scraping.", {
                "enabled": {"type": "boolean", "default": True,
                            "description": "Annotate pods for Prometheus scraping."},
            }, default={}),
        }, default={}),
    }, required=["regions"], **{"x-kubernetes-validations": _spec_rules()})


_DC = "(has({0}.datacenter) ? {0}.datacenter : {0}.name)"
_KEPT = ("self.regions.exists(r, r.name == o.name) || "
         "(has(self.peers) && self.peers.exists(p, p.name == o.name))")


def _peers() -> Schema:
    return {
        "type": "array", "maxItems": api.MAX_REGIONS,
        "description": "Regions run by other ChatClusters (another Kubernetes cluster): every "
                       "region here dials them and the keyspace replicates to them.",
        "items": _obj("A region of another ChatCluster.", {
            "name": _str("Its region name.", maxLength=api.MAX_REGION_NAME,
                         pattern=api.DNS_LABEL.pattern),
            "endpoint": _str("Its cross-region endpoint (host:port of its im tier).",
                             maxLength=253),
            "datacenter": _str("Its CQL datacenter (default: the name).", maxLength=63),
            "replicationFactor": _int("Replicas of the keyspace in its datacenter.",
                                      api.Peer.replication_factor),
            "cidrs": {"type": "array", "maxItems": 32, "description": (
                "Networks its pods dial from (CIDRs): the NetworkPolicy lets them reach the "
                "gRPC port."), "items": {"type": "string", "maxLength": 64}},
        }, required=["name", "endpoint"], **{"x-kubernetes-validations": [
            _rule("self.replicationFactor >= 0 && self.replicationFactor <= 9",
                  api.Message.PEER_REPLICATION),
            _rule("!has(self.cidrs) || self.cidrs.all(c, isCIDR(c))", api.Message.PEER_CIDR),
        ]}),
    }


def _tls_files(description: str, client: str) -> Schema:
    return _obj(description, {
        "secretName": _str("Secret in the ChatCluster's namespace.", maxLength=253),
        "caKey": _str("Key of the CA bundle.", default="ca.crt", maxLength=253),
        "certKey": _str(f"Key of the client certificate ({client}).", maxLength=253),
        "keyKey": _str("Key of the client certificate's private key.", maxLength=253),
    }, required=["secretName"])


def _tls() -> Schema:
    return _obj("TLS: mutual TLS between the tiers and across regions, the client-facing "
                "certificate, Redis and CQL TLS.", {
        "enabled": {"type": "boolean", "default": True, "description": (
            "Issue certificates and turn TLS on for client connections and every gRPC "
            "link.")},
        "issuerRef": _obj("A cert-manager issuer: the operator emits cert-manager "
                          "Certificates instead of issuing from its own CA.", {
            "name": _str("Issuer name.", maxLength=253),
            "kind": _str("Issuer or ClusterIssuer.", default="Issuer",
                         enum=list(api.ISSUER_KINDS)),
            "group": _str("API group.", default="cert-manager.io", maxLength=253),
        }, required=["name"]),
        "clientSecretName": _str("A kubernetes.io/tls Secret with the client-facing certificate "
                                 "(WSS, TCP+TLS). Empty: issued for the gateway Services.",
                                 maxLength=253),
        "certificateLifetimeHours": _int("Lifetime of an issued certificate; it is renewed "
                                         "when a third of it is left.", api.Tls.lifetime_hours,
                                         minimum=24, maximum=87600),
        "peerCA": _tls_files("CA bundle that peer regions' certificates chain to (other "
                             "ChatClusters' CAs). Default: this cluster's CA.", "unused"),
        "redis": _tls_files("Redis TLS (rediss://): the server's CA, optional client "
                            "certificate.", "optional"),
        "cql": _tls_files("CQL TLS: the server's CA, optional client certificate.",
                          "optional"),
    }, default={}, **{"x-kubernetes-validations": [
        _rule("self.enabled || !has(self.issuerRef)", api.Message.ISSUER_WITHOUT_TLS)]})


def _network_policy() -> Schema:
    default = api.NetworkPolicy()
    return _obj("A NetworkPolicy per region: client ports open to all; gRPC and admin ports "
                "only from this cluster's pods, the operator and the peers' cidrs.", {
        "enabled": {"type": "boolean", "default": True,
                    "description": "Generate the NetworkPolicies."},
        "operatorNamespace": _str("Namespace the operator runs in.",
                                  default=default.operator_namespace, maxLength=63),
        "operatorPodLabels": {"type": "object", "description": "Labels of the operator's pods.",
                              "additionalProperties": {"type": "string"},
                              "default": default.operator_labels},
        "metricsNamespaces": {"type": "array", "maxItems": 16, "description": (
            "Namespaces whose pods may reach the admin port for /metrics (Prometheus)."),
            "items": {"type": "string", "maxLength": 63}},
    }, default={})


def _spec_rules() -> list[dict[str, Any]]:
    return [
        _rule("size(self.regions) == 0 || self.regions.exists(r, r.cql.replicationFactor >= 1)"
              " || (has(self.peers) && self.peers.exists(p, p.replicationFactor >= 1))",
              api.Message.NO_REPLICAS),
        _rule("!has(self.peers) || self.peers.all(p, self.peers.exists_one(q, q.name == p.name)"
              " && !self.regions.exists(r, r.name == p.name))", api.Message.PEER_NAME),
        _rule(f"!has(self.peers) || self.peers.all(p, self.peers.exists_one(q, {_DC.format('q')}"
              f" == {_DC.format('p')}) && !self.regions.exists(r, {_DC.format('r')} == "
              f"{_DC.format('p')}))", api.Message.PEER_DATACENTER),
        _rule("!has(self.peers) || size(self.peers) == 0 || (has(self.auth) && "
              "has(self.auth.tokenSecretRef))", api.Message.PEERS_NEED_TOKEN_SECRET),
        _rule(f"oldSelf.regions.all(o, o.cql.replicationFactor == 0 || {_KEPT}) && "
              f"(!has(oldSelf.peers) || oldSelf.peers.all(o, o.replicationFactor == 0 || "
              f"{_KEPT}))", api.Message.REMOVED_WITH_REPLICAS),
    ]


def _conditions() -> Schema:
    return {
        "type": "array", "description": "metav1.Condition list, one per type.",
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
        "items": _obj("A condition in the Kubernetes format.", {
            "type": _str("Condition type.", maxLength=316),
            "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": _str("CamelCase reason.", maxLength=1024),
            "message": _str("Human-readable details.", maxLength=32768),
            "lastTransitionTime": _str("When status last changed.", format="date-time"),
            "observedGeneration": _int("Generation the condition was computed for.",
                                       minimum=0),
        }, required=["type", "status", "lastTransitionTime", "reason", "message"]),
    }


def _status() -> Schema:
    tier = _obj("Replicas of one tier.", {
        "replicas": _int("Desired pods."),
        "readyReplicas": _int("Ready pods."),
        "updatedReplicas": _int("Pods at the current template."),
    })
    region = _obj("What one region reports.", {
        "name": _str("Region name."),
        "datacenter": _str("CQL datacenter."),
        "ready": {"type": "boolean", "description": "Every tier fully ready."},
        "connections": _int("Live client connections on the region's gateways."),
        "tiers": _obj("Per tier.", {t: tier for t in api.TIERS}),
        "conditions": _conditions(),
        "rollout": _obj("The gateways' paced drain rollout.", {
            "targetVersion": _str("The image version being rolled out."),
            "revision": _str("The gateway pod template revision being rolled out."),
            "gatewaysUpdated": _str("Gateway pods ready at the revision / gateway pods."),
            "draining": _str("The pod(s) draining now."),
            "connectionsLeft": _int("Connections left on the draining pod(s)."),
            "phase": _str("Draining, Waiting (for a new pod), Paused or Done.",
                          enum=["Draining", "Waiting", "Paused", "Done"]),
            "paused": _str("Why the rollout is paused (a new pod not ready)."),
        }),
        "peers": {"type": "array", "description": (
            "What the region's im pods report of each peer (`GET /v1/peers`); absent while "
            "none answers."), "items": _obj("One peer.", {
                "name": _str("Peer region name."),
                "state": _str("Reachable, Unreachable (no answer), Mismatch (another region, "
                              "protocol or token key) or NotListed (pods on an older list).",
                              enum=["Reachable", "Unreachable", "Mismatch", "NotListed"]),
                "message": _str("The error, with the im pod that saw it."),
                "replication": _obj(
                    "How far behind the region applies the peer's log (the im pod furthest "
                    "behind); absent where the keyspace replicates.", {
                        "state": _str("InSync, Lagging (over maxLagEntries), Stalled (no "
                                      "batch for maxSilenceSeconds) or Trimmed (the peer "
                                      "trimmed its log past what was applied).",
                                      enum=["InSync", "Lagging", "Stalled", "Trimmed"]),
                        "lag": _int("The peer's log positions not applied yet."),
                        "appliedTo": _int("The peer's log position applied.", format="int64"),
                        "peerHead": _int("The peer's newest log position, as it last said.",
                                         format="int64"),
                        "connected": {"type": "boolean",
                                      "description": "The stream of the peer's log is open."},
                        "lastBatchSecondsAgo": _int("Seconds since the last batch or "
                                                    "heartbeat."),
                    }),
            })},
    })
    return _obj("Observed state, written by the operator.", {
        "observedGeneration": _int("The spec generation this status describes.",
                                   format="int64"),
        "conditions": _conditions(),
        "regions": {"type": "array", "description": "Per region.", "items": region},
        "readyRegions": _str("Ready regions / regions."),
        "readyGateways": _str("Ready gateway pods / desired gateway pods."),
        "connections": _int("Live client connections, every region."),
        "version": _str("The version(s) the ready pods run (their version label), comma "
                        "separated during a rollout; empty while no pod is ready."),
        "versions": {"type": "array", "description": "Ready pods per version they run.",
                     "items": _obj("One version.", {
                         "version": _str("The image version."),
                         "readyPods": _int("Ready tier pods that run it."),
                     })},
        "certificates": _obj("The certificates issued from the operator's CA (absent with "
                             "cert-manager or TLS off).", {
            "notAfter": _str("When the first of them expires.", format="date-time"),
            "renewAt": _str("When the first of them is renewed (a third of its lifetime "
                            "before it expires).", format="date-time"),
        }),
        "storage": _obj("The keyspace migration.", {
            "migrationJob": _str("Name of the current `chatplane storage migrate` Job."),
            "migrated": {"type": "boolean", "description": "That Job has succeeded (the "
                         "tiers wait for it)."},
            "failure": _str("Why that Job failed for good (its Failed condition's reason: "
                            "message); the cluster is Degraded (MigrationFailed)."),
        }),
    })


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Regions", "type": "string", "jsonPath": ".status.readyRegions",
     "description": "Ready regions / regions"},
    {"name": "Gateways", "type": "string", "jsonPath": ".status.readyGateways",
     "description": "Ready gateway pods / desired"},
    {"name": "Connections", "type": "integer", "jsonPath": ".status.connections"},
    {"name": "Version", "type": "string", "jsonPath": ".status.version",
     "description": "The version(s) the ready pods run"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition `chatclusters.chatplane.dev`."""
    root: Schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object"}, "spec": _fill_defaults(_spec()),
            "status": _status(),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [
            _rule(f"size(self.metadata.name) <= {api.MAX_CLUSTER_NAME}", api.Message.CLUSTER_NAME),
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}",
                     "labels": {"app.kubernetes.io/name": "chatplane",
                                "app.kubernetes.io/part-of": "chatplane"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {"plural": api.PLURAL, "singular": "chatcluster", "kind": api.KIND,
                      "listKind": f"{api.KIND}List", "shortNames": ["chat", "cc"],
                      "categories": ["chatplane"]},
            "versions": [{
                "name": api.VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def build_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering resources (group kopf.dev), for running several operator replicas:
    they record the live replicas and their priorities; only the highest works."""
    out = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = kind.lower() + "s"
        out.append({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.kopf.dev"},
            "spec": {
                "group": "kopf.dev", "scope": scope,
                "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                "versions": [{
                    "name": "v1", "served": True, "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True}}}},
                }],
            },
        })
    return out


HEADER = "# Generated by `python -m chatplane_operator.crd`; do not edit.\n"


def dump() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def dump_peering() -> str:
    return HEADER + yaml.safe_dump_all(build_peering_crds(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(dump_peering() if sys.argv[1:] == ["--peering"] else dump())
