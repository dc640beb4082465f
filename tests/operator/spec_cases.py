"""Specs the CRD and `api.validate()` must both refuse, with the message each must give."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conftest import region

from chatplane_operator import api

M = api.Message


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return mutate


INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("duplicate-dc", lambda s: s["regions"].append(region("ap", datacenter="eu")),
     M.DUPLICATE_DATACENTER),
    ("no-region", _set("regions", []), M.NO_REGION),
    ("zero-gateways", _set("regions.0.tiers", {"gateway": {"replicas": 0}}), M.NO_GATEWAY),
    ("zero-im", _set("regions.0.tiers", {"im": {"replicas": 0}}), M.TIER_REPLICAS),
    ("drain-rate-zero", _set("upgrade", {"drainRate": 0}), M.DRAIN_RATE),
    ("drain-rate-negative", _set("upgrade", {"drainRate": -5}), M.DRAIN_RATE),
    ("replication-lag-negative", _set("replication", {"maxLagEntries": -1}),
     M.REPLICATION_BOUNDS),
    ("replication-silence-short", _set("replication", {"maxSilenceSeconds": 1}),
     M.REPLICATION_BOUNDS),
    ("drain-deadline", _set("upgrade", {"drainDeadlineSeconds": 0}), M.DRAIN_DEADLINE),
    ("no-cql-hosts", _set("regions.0.cql", {"hosts": []}), M.NO_CQL_HOSTS),
    ("replication", _set("regions.0.cql.replicationFactor", 12), M.REPLICATION),
    ("no-replicas", lambda s: [r["cql"].update(replicationFactor=0) for r in s["regions"]],
     M.NO_REPLICAS),
    ("peer-named-as-region", _set("peers", [{"name": "eu", "endpoint": "x:1", "datacenter": "x"}]),
     M.PEER_NAME),
    ("peer-dc-of-a-region", _set("peers", [{"name": "ap", "endpoint": "x:1", "datacenter": "eu"}]),
     M.PEER_DATACENTER),
    ("peer-replication", _set("peers", [{"name": "ap", "endpoint": "x:1",
                                         "replicationFactor": 10}]), M.PEER_REPLICATION),
    ("peers-without-token-secret", _set("peers", [{"name": "ap", "endpoint": "x:1"}]),
     M.PEERS_NEED_TOKEN_SECRET),
    ("admin-port-is-http", _set("ports", {"admin": 8080}), M.PORTS_DISTINCT),
    ("admin-port-is-grpc", _set("ports", {"admin": 7000, "grpc": 7000}), M.PORTS_DISTINCT),
    ("issuer-without-tls", _set("tls", {"enabled": False, "issuerRef": {"name": "ca"}}),
     M.ISSUER_WITHOUT_TLS),
    ("signing-key-id", _set("auth", {"signingKeyId": "k1:x"}), M.SIGNING_KEY_ID),
    ("signing-key-with-secret-ref", _set("auth", {"signingKeyId": "k1",
                                                  "tokenSecretRef": {"name": "t"}}),
     M.SIGNING_KEY_WITH_SECRET_REF),
    ("token-ttl", _set("auth", {"tokenTTLSeconds": 5}), M.TOKEN_TTL),
    ("peer-cidr", _set("peers", [{"name": "ap", "endpoint": "x:1", "cidrs": ["10.1.0.0/33"]}]),
     M.PEER_CIDR),
]


