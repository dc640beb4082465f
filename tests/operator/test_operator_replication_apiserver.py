"""Replication wiring on the real kube-apiserver: peer lists in every region, the keyspace
map through the migration Job, `ReplicationReady`, and the CEL rule that refuses removing
a region that still holds replicas. No Job controller runs here: the test marks a Job
succeeded itself. No im pod runs either, so `ReplicationReady` stops at "wired"
(`ReplicationWired`, Unknown): whether regions reach each other is for
test_operator_reachability_apiserver.py, with real data-plane processes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import OperatorProcess, region, wait_until
from kube_children import SELECTOR, cluster_status, condition, wait_reconciled
from kube_client import Kube, KubeError

pytestmark = pytest.mark.kube

AP_PEER = {"name": "ap", "endpoint": "chat-ap-im.chat.svc.ap.example:9090",
           "datacenter": "ap-south", "replicationFactor": 2}


def _job(kube: Kube, namespace: str, other_than: str = "") -> str:
    names = wait_until(lambda: [j["metadata"]["name"] for j in kube.list("Job", namespace, SELECTOR)
                                if j["metadata"]["name"] != other_than], 20, "a new Job")
    assert len(names) == 1, names
    return str(names[0])


def _succeed(kube: Kube, namespace: str, job: str) -> None:
    kube.merge_patch("Job", namespace, job, {"status": {
        "succeeded": 1, "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T00:01:00Z", "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"},
            {"type": "Complete", "status": "True"}]}}, sub="status")


def _replication(kube: Kube, namespace: str) -> dict[str, Any]:
    return condition(cluster_status(kube, namespace), "ReplicationReady")


def _config(kube: Kube, namespace: str, region_name: str) -> dict[str, str]:
    return dict(kube.get("ConfigMap", namespace, f"chat-{region_name}-config")["data"])


def test_adding_a_region_rewires_every_region_and_the_keyspace(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
) -> None:
    kube.create({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "shared-token", "namespace": namespace},
                 "stringData": {"token": "platform-provided-signing-key"}})
    make_cluster(("eu", "us"), mutate=lambda o: o["spec"].update({
        "peers": [AP_PEER], "auth": {"tokenSecretRef": {"name": "shared-token"}}}))
    wait_reconciled(kube, namespace, 2)
    first = _job(kube, namespace)
    pending = wait_until(lambda: _replication(kube, namespace).get("reason")
                         == "MigrationPending" and _replication(kube, namespace), 20, "pending")
    assert pending["status"] == "False" and first in pending["message"]
    _succeed(kube, namespace, first)
    wired = wait_until(lambda: _replication(kube, namespace).get("reason") == "ReplicationWired"
                       and _replication(kube, namespace), 20, "wired")
    assert wired["status"] == "Unknown"  # no data plane reports its peers here
    assert "every region lists its 2 peer(s)" in wired["message"]
    for name in ("eu", "us"):
        config = _config(kube, namespace, name)
        assert json.loads(config["CHATPLANE_CQL_REPLICATION"]) == {
            "eu": 3, "us": 3, "ap-south": 2}
    # the token key is the platform's Secret, the same in every region (and cluster)
    sts = kube.get("StatefulSet", namespace, "chat-eu-gateway")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CHATPLANE_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "shared-token", "key": "token"}

    # add a region: every region's peer list and the keyspace map follow, through a new Job
    kube.create({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "redis-sa", "namespace": namespace},
                 "stringData": {"url": "redis://redis-sa:6379/0"}})
    regions = kube.get("ChatCluster", namespace, "chat")["spec"]["regions"]
    regions.append(region("sa", cql={"hosts": ["scylla-sa"], "replicationFactor": 1}))
    kube.merge_patch("ChatCluster", namespace, "chat", {"spec": {"regions": regions}})
    wait_reconciled(kube, namespace, 3)
    second = _job(kube, namespace, other_than=first)
    wait_until(lambda: kube.get("Job", namespace, first) is None, 20, "the old Job pruned")
    for name in ("eu", "us", "sa"):
        config = wait_until(lambda n=name: "sa-south" not in (c := _config(kube, namespace, n))
                            ["CHATPLANE_PEERS"] and len(json.loads(c["CHATPLANE_PEERS"])) == 3
                            and c, 20, f"{name}'s peers")
        peers = {p["name"] for p in json.loads(config["CHATPLANE_PEERS"])}
        assert peers == {"eu", "us", "sa", "ap"} - {name}
        assert json.loads(config["CHATPLANE_CQL_REPLICATION"]) == {
            "eu": 3, "us": 3, "sa": 1, "ap-south": 2}
    assert wait_until(lambda: _replication(kube, namespace).get("reason") == "MigrationPending"
                      and _replication(kube, namespace), 20, "pending again")["status"] == "False"
    _succeed(kube, namespace, second)
    wired = wait_until(lambda: _replication(kube, namespace).get("reason") == "ReplicationWired"
                       and _replication(kube, namespace), 20, "wired again")
    assert "every region lists its 3 peer(s)" in wired["message"]


def test_removing_a_region_that_holds_replicas_is_refused(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
) -> None:
    make_cluster(("eu", "us"))
    wait_reconciled(kube, namespace, 2)
    first = _job(kube, namespace)
    regions = kube.get("ChatCluster", namespace, "chat")["spec"]["regions"]
    with pytest.raises(KubeError) as refused:
        kube.merge_patch("ChatCluster", namespace, "chat", {"spec": {"regions": regions[:1]}})
    assert refused.value.status == 422
    assert ("a region or peer cannot be removed while the keyspace keeps replicas in its "
            "datacenter: set its replicationFactor to 0 first") in refused.value.message
    # decommission: replication factor 0 drops the datacenter from the keyspace map
    regions[1]["cql"]["replicationFactor"] = 0
    kube.merge_patch("ChatCluster", namespace, "chat", {"spec": {"regions": regions}})
    second = _job(kube, namespace, other_than=first)
    config = wait_until(lambda: json.loads(_config(kube, namespace, "eu")
                                           ["CHATPLANE_CQL_REPLICATION"]) == {"eu": 3}, 20,
                        "us dropped from the keyspace map")
    assert config
    _succeed(kube, namespace, second)
    kube.merge_patch("ChatCluster", namespace, "chat", {"spec": {"regions": regions[:1]}})
    wait_reconciled(kube, namespace, 1)
    assert json.loads(_config(kube, namespace, "eu")["CHATPLANE_PEERS"]) == []
