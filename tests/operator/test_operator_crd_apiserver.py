"""The CRD on a real kube-apiserver: it installs, defaults, and refuses bad ChatClusters with
the CEL messages (the same ones `api.validate()` gives in process)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from conftest import cluster_body, region
from kube_client import Kube, KubeError
from spec_cases import INVALID

from chatplane_operator import api

pytestmark = pytest.mark.kube
M = api.Message


def test_crd_is_established_with_short_names_and_columns(kube: Kube) -> None:
    crd = kube.get("CustomResourceDefinition", None, "chatclusters.chatplane.dev")
    assert kube.crd_established("chatclusters.chatplane.dev")
    assert set(crd["spec"]["names"]["shortNames"]) == {"chat", "cc"}
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Regions", "Gateways", "Connections", "Version", "Age"]


def test_apiserver_fills_in_the_schema_defaults(kube: Kube, namespace: str) -> None:
    obj = cluster_body("defaults", namespace, ("eu",))
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    created = kube.create(obj)
    spec = created["spec"]
    assert spec["upgrade"] == {"drainRate": 100, "drainDeadlineSeconds": 300, "maxUnavailable": 1,
                               "readyTimeoutSeconds": 300}
    assert spec["regions"][0]["tiers"]["gateway"]["replicas"] == 3
    assert spec["storage"]["keyspace"] == "chatplane"
    # The Python defaults agree with the apiserver's.
    parsed = api.parse(created)
    assert parsed.upgrade == api.Upgrade()
    assert parsed.regions[0].tiers["gateway"].replicas == 3


@pytest.mark.parametrize(("case", "mutate", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_cluster_is_refused_with_its_message(
    kube: Kube, namespace: str, case: str, mutate: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    obj = cluster_body(f"bad-{case}", namespace, ("eu",))
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    mutate(obj["spec"])
    with pytest.raises(KubeError) as refused:
        kube.create(obj)
    assert refused.value.status == 422
    assert message in refused.value.message
    # api.validate() refuses the same spec with the same message.
    with pytest.raises(api.SpecError) as local:
        api.validate(api.parse(obj))
    assert message in local.value.messages


def test_long_cluster_name_is_refused(kube: Kube, namespace: str) -> None:
    obj = cluster_body("c" * 27, namespace, ("eu",))
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    with pytest.raises(KubeError) as refused:
        kube.create(obj)
    assert M.CLUSTER_NAME in refused.value.message


def _created(kube: Kube, namespace: str, name: str, regions: tuple[str, ...]) -> Any:
    obj = cluster_body(name, namespace, regions)
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    return kube.create(obj)


def test_keyspace_cannot_be_renamed_in_place(kube: Kube, namespace: str) -> None:
    _created(kube, namespace, "ks", ("eu",))
    with pytest.raises(KubeError) as refused:
        kube.merge_patch("ChatCluster", namespace, "ks", {"spec": {"storage": {"keyspace": "x"}}})
    assert M.KEYSPACE_IMMUTABLE in refused.value.message


def test_region_cannot_be_renamed_in_place_but_can_be_added(kube: Kube, namespace: str) -> None:
    created = _created(kube, namespace, "rn", ("eu", "us"))
    renamed = copy.deepcopy(created["spec"]["regions"])
    renamed[1]["name"] = "ap"
    with pytest.raises(KubeError) as refused:
        kube.merge_patch("ChatCluster", namespace, "rn", {"spec": {"regions": renamed}})
    assert M.RENAMED_REGION in refused.value.message
    added = [*created["spec"]["regions"], region("ap")]
    updated = kube.merge_patch("ChatCluster", namespace, "rn", {"spec": {"regions": added}})
    assert [r["name"] for r in updated["spec"]["regions"]] == ["eu", "us", "ap"]
    old, new = api.parse(created), api.parse(updated)
    api.validate(new, old)
    with pytest.raises(api.SpecError):
        api.validate(api.parse({**created, "spec": {**created["spec"], "regions": renamed}}), old)


def test_signing_key_id_cannot_be_removed_once_set(kube: Kube, namespace: str) -> None:
    created = _created(kube, namespace, "sk", ("eu",))
    rotated = kube.merge_patch("ChatCluster", namespace, "sk",
                               {"spec": {"auth": {"signingKeyId": "k1"}}})
    kube.merge_patch("ChatCluster", namespace, "sk", {"spec": {"auth": {"signingKeyId": "k2"}}})
    with pytest.raises(KubeError) as refused:
        kube.merge_patch("ChatCluster", namespace, "sk",
                         {"spec": {"auth": {"signingKeyId": None}}})
    assert M.SIGNING_KEY_REMOVED in refused.value.message
    api.validate(api.parse(rotated), api.parse(created))  # setting it is fine
    with pytest.raises(api.SpecError, match="cannot be removed once set"):
        api.validate(api.parse(created), api.parse(rotated))


def test_regions_are_a_list_map_keyed_by_name(kube: Kube, namespace: str) -> None:
    crd = kube.get("CustomResourceDefinition", None, "chatclusters.chatplane.dev")
    regions = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["regions"]
    assert (regions["x-kubernetes-list-type"], regions["x-kubernetes-list-map-keys"]) == (
        "map", ["name"])
    obj = cluster_body("dup", namespace, ("eu",))
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    obj["spec"]["regions"].append(region("eu"))
    with pytest.raises(KubeError) as refused:
        kube.create(obj)  # the list-map itself refuses a second "eu"
    assert refused.value.status == 422 and "Duplicate value" in refused.value.message
    with pytest.raises(api.SpecError) as local:
        api.validate(api.parse(obj))
    assert M.DUPLICATE_REGION in local.value.messages


def test_a_regions_datacenter_cannot_change_in_place(kube: Kube, namespace: str) -> None:
    created = _created(kube, namespace, "dc", ("eu", "us"))
    moved = copy.deepcopy(created["spec"]["regions"])
    moved[1]["datacenter"] = "us-west"
    with pytest.raises(KubeError) as refused:
        kube.merge_patch("ChatCluster", namespace, "dc", {"spec": {"regions": moved}})
    assert M.DATACENTER_IMMUTABLE in refused.value.message
    # the per-item rule follows the region by name, wherever it sits in the list
    reordered = [created["spec"]["regions"][1], created["spec"]["regions"][0]]
    updated = kube.merge_patch("ChatCluster", namespace, "dc", {"spec": {"regions": reordered}})
    old = api.parse(created)
    api.validate(api.parse(updated), old)
    with pytest.raises(api.SpecError) as local:
        api.validate(api.parse({**created, "spec": {**created["spec"], "regions": moved}}), old)
    assert M.DATACENTER_IMMUTABLE in local.value.messages


def test_an_archive_bucket_is_defaulted_checked_and_parsed(kube: Kube, namespace: str) -> None:
    obj = cluster_body("archive", namespace, ("eu",))
    del obj["metadata"]["uid"], obj["metadata"]["generation"]
    obj["spec"]["storage"] = {"archive": {"s3": {
        "endpoint": "https://s3.eu.example", "bucket": "chat-archive",
        "credentialsSecretRef": {"name": "archive-keys"}}}}
    for bad, where in ((("bucket", "Chat_Archive"), "spec.storage.archive.s3.bucket"),
                       (("endpoint", "s3.eu.example"), "spec.storage.archive.s3.endpoint")):
        wrong = copy.deepcopy(obj)
        wrong["metadata"]["name"] = "archive-bad"
        wrong["spec"]["storage"]["archive"]["s3"][bad[0]] = bad[1]
        with pytest.raises(KubeError) as refused:
            kube.create(wrong)
        assert refused.value.status == 422 and where in refused.value.message
    created = kube.create(obj)
    archive = created["spec"]["storage"]["archive"]
    assert archive["afterDays"] == 30 and archive["intervalSeconds"] == 3600
    assert archive["retentionDays"] == {"direct": 0, "group": 0, "events": 0}
    assert archive["s3"]["credentialsSecretRef"] == {
        "name": "archive-keys", "accessKeyKey": "accessKey", "secretKeyKey": "secretKey"}
    # the Python defaults agree with the apiserver's
    assert api.parse(created).storage.archive == api.parse(obj).storage.archive
