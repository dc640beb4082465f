"""api.parse() defaults and api.validate() rules, in process; the docs' field reference."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from spec_cases import INVALID

from chatplane_operator import api, apidoc

ROOT = Path(__file__).resolve().parents[2]


def test_parse_fills_in_defaults(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    assert cluster.image.reference == "ghcr.io/chatplane/chatplane:0.1.0"
    eu = cluster.region("eu")
    assert eu.datacenter == "eu"
    assert eu.placement.region_value == "eu"
    assert {t: eu.tiers[t].replicas for t in api.TIERS} == api.DEFAULT_REPLICAS
    assert eu.redis == api.SecretKeyRef("redis-eu", "url")
    assert cluster.storage == api.Storage()
    assert cluster.upgrade == api.Upgrade()
    assert cluster.token_secret is None
    api.validate(cluster)


def test_example_is_valid(example: dict[str, Any]) -> None:
    cluster = api.parse(example)
    api.validate(cluster)
    assert [r.datacenter for r in cluster.regions] == ["eu-west", "us-east"]
    assert cluster.storage.credentials == api.CqlCredentials("scylla-auth")


@pytest.mark.parametrize(("case", "mutate", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_validate_refuses(body: dict[str, Any], case: str,
                          mutate: Callable[[dict[str, Any]], None], message: str) -> None:
    mutate(body["spec"])
    with pytest.raises(api.SpecError) as refused:
        api.validate(api.parse(body))
    assert message in refused.value.messages


def test_validate_lists_every_broken_rule(body: dict[str, Any]) -> None:
    body["spec"]["upgrade"] = {"drainRate": 0, "drainDeadlineSeconds": 0}
    body["spec"]["regions"][0]["tiers"] = {"gateway": {"replicas": 0}}
    with pytest.raises(api.SpecError) as refused:
        api.validate(api.parse(body))
    assert set(refused.value.messages) == {api.Message.DRAIN_RATE, api.Message.DRAIN_DEADLINE,
                                           api.Message.NO_GATEWAY}


def test_transition_rules(body: dict[str, Any]) -> None:
    old = api.parse(body)
    renamed = copy.deepcopy(body)
    renamed["spec"]["regions"][1]["name"] = "ap"
    with pytest.raises(api.SpecError, match="renamed in place"):
        api.validate(api.parse(renamed), old)
    keyspace = copy.deepcopy(body)
    keyspace["spec"]["storage"] = {"keyspace": "other"}
    with pytest.raises(api.SpecError, match="keyspace cannot be changed"):
        api.validate(api.parse(keyspace), old)
    removed = copy.deepcopy(body)
    removed["spec"]["regions"].pop()
    with pytest.raises(api.SpecError, match="cannot be removed while the keyspace keeps"):
        api.validate(api.parse(removed), old)
    # decommissioned first (replication factor 0), then removed
    emptied = copy.deepcopy(body)
    emptied["spec"]["regions"][1]["cql"]["replicationFactor"] = 0
    api.validate(api.parse(emptied), old)
    api.validate(api.parse(removed), api.parse(emptied))
    # handed over to another cluster: it becomes a peer
    handed = copy.deepcopy(removed)
    handed["spec"]["peers"] = [{"name": "us", "endpoint": "im.us.example:9090"}]
    handed["spec"]["auth"] = {"tokenSecretRef": {"name": "token"}}
    api.validate(api.parse(handed), old)


def test_bad_region_name(body: dict[str, Any]) -> None:
    body["spec"]["regions"][0]["name"] = "EU_West"
    with pytest.raises(api.SpecError) as refused:
        api.validate(api.parse(body))
    assert api.Message.REGION_NAME in refused.value.messages


def test_docs_hold_the_generated_field_reference() -> None:
    assert apidoc.reference() in (ROOT / "docs" / "operator.md").read_text()


def test_reference_documents_every_spec_field() -> None:
    text = apidoc.reference()
    for field in ("spec.upgrade.drainRate", "spec.regions[].redis.urlSecretRef.name",
                  "spec.storage.credentialsSecretRef.passwordKey",
                  "spec.observability.metrics.enabled", "spec.auth.tokenSecretRef.key"):
        assert f"`{field}`" in text
