"""The pure builders: every manifest validates with kubernetes-validate --strict (1.29-1.33)
and carries the properties the operator promises (security, probes, drain, spread, owners)."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
from conftest import cluster_body

from chatplane_operator import api
from chatplane_operator.specs import bundle, config, jobs, naming, pods, workloads

K8S_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")


def manifests(body: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = api.parse(body)
    out = [m for region in bundle.build_all(cluster).values() for m in region]
    return [*out, *bundle.build_cluster(cluster), config.build_generated_secret(cluster)]


def by_name(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_strictly(version: str, body: dict[str, Any],
                                           example: dict[str, Any]) -> None:
    example["metadata"]["uid"] = "uid-example"
    objs = manifests(body) + manifests(example)
    assert len(objs) == 2 * (2 * 15 + 2)
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


def test_a_region_has_every_object(body: dict[str, Any]) -> None:
    names = sorted(by_name(manifests(body)))
    eu = [n for n in names if n[1].startswith("chat-eu-")]
    assert eu == sorted([
        ("ConfigMap", "chat-eu-config"),
        ("Deployment", "chat-eu-im"), ("Deployment", "chat-eu-ipconf"),
        ("Deployment", "chat-eu-state"), ("NetworkPolicy", "chat-eu-ingress"),
        ("PodDisruptionBudget", "chat-eu-gateway"), ("PodDisruptionBudget", "chat-eu-im"),
        ("PodDisruptionBudget", "chat-eu-ipconf"), ("PodDisruptionBudget", "chat-eu-state"),
        ("Service", "chat-eu-gateway"), ("Service", "chat-eu-gateway-public"),
        ("Service", "chat-eu-im"), ("Service", "chat-eu-ipconf"), ("Service", "chat-eu-state"),
        ("StatefulSet", "chat-eu-gateway"),
    ])


def test_everything_is_owned_and_labelled(body: dict[str, Any]) -> None:
    for obj in manifests(body):
        meta = obj["metadata"]
        assert meta["ownerReferences"] == [naming.owner_reference(api.parse(body))]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "chatplane-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "chat"
        assert meta["namespace"] == "chat"


def test_gateways_drain_before_they_go(body: dict[str, Any]) -> None:
    body["spec"]["upgrade"] = {"drainDeadlineSeconds": 120, "drainRate": 50}
    cluster = api.parse(body)
    sts = workloads.build_gateway_sts(cluster, cluster.regions[0])
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    pod = sts["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120 + pods.DRAIN_MARGIN_S
    hook = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert hook == ["python3", "-m", "chatplane.drainhook", "--url", "http://127.0.0.1:9091",
                    "--wait"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["CHATPLANE_ADMIN_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "chat-generated", "key": "admin"}  # the hook's drain call carries it
    data = config.config_data(cluster, cluster.regions[0])
    assert data["CHATPLANE_DRAIN_RATE"] == "50"
    assert data["CHATPLANE_DRAIN_DEADLINE_S"] == "120"


def test_pods_are_non_root_read_only_and_probed(body: dict[str, Any]) -> None:
    for obj in manifests(body):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue  # the Job's pod: see test_migrate_job
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["args"] == [obj["metadata"]["labels"]["app.kubernetes.io/component"]]
        keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
        assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        assert pod["nodeSelector"] == {
            "topology.kubernetes.io/region": obj["metadata"]["labels"]["chatplane.dev/region"]}


def test_env_contract(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    eu = cluster.regions[0]
    data = config.config_data(cluster, eu)
    assert data["CHATPLANE_REGION"] == "eu"
    assert data["CHATPLANE_HOST"] == "0.0.0.0"
    assert data["CHATPLANE_DATA_DIR"].startswith("/tmp/")  # the emptyDir
    assert data["CHATPLANE_STATE_ADDRS"] == "chat-eu-state.chat.svc:9090"
    assert data["CHATPLANE_IM_ADDRS"] == "chat-eu-im.chat.svc:9090"
    assert data["CHATPLANE_CQL_HOSTS"] == "scylla-eu.scylla.svc"
    assert json.loads(data["CHATPLANE_PEERS"]) == [
        {"name": "us", "endpoint": "chat-us-im.chat.svc:9090", "datacenter": "us"}]
    assert json.loads(data["CHATPLANE_CQL_REPLICATION"]) == {"eu": 3, "us": 3}
    gateway = pods.container(cluster, eu, "gateway")
    env = {e["name"]: e for e in gateway["env"]}
    assert env["CHATPLANE_GATEWAY_ADVERTISE_URL"]["value"] == (
        "wss://$(POD_NAME).chat-eu-gateway.chat.svc:8080/ws")  # TLS is on by default
    # the raw TCP endpoint likewise (the pod IP would be outside the certificate)
    assert env["CHATPLANE_GATEWAY_ADVERTISE_TCP"]["value"] == (
        "$(POD_NAME).chat-eu-gateway.chat.svc:8081")
    assert env["CHATPLANE_SERVER_ID"]["value"] == "$(POD_NAME)"
    assert env["CHATPLANE_GRPC_ADVERTISE_HOST"]["value"] == "$(POD_IP)"
    names = [e["name"] for e in gateway["env"]]
    assert names.index("POD_NAME") < names.index("CHATPLANE_SERVER_ID")  # $(…) order
    assert env["CHATPLANE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-eu", "key": "url"}
    assert env["CHATPLANE_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "chat-generated", "key": "token"}
    assert not any(k.startswith("CHATPLANE_") and "SECRET" in k for k in data)


def test_scaling_changes_only_that_tier(body: dict[str, Any]) -> None:
    before = by_name(manifests(body))
    scaled = copy.deepcopy(body)
    scaled["spec"]["regions"][1]["tiers"] = {"state": {"replicas": 4}}
    after = by_name(manifests(scaled))
    changed = sorted(k for k in before if k[0] != "Secret" and before[k] != after[k])
    assert changed == [("Deployment", "chat-us-state")]


def test_config_change_rolls_pods_through_the_hash(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    changed = copy.deepcopy(body)
    changed["spec"]["limits"] = {"maxFrameBytes": 4096}
    other = api.parse(changed)
    for region, region2 in zip(cluster.regions, other.regions, strict=True):
        assert config.config_hash(cluster, region) != config.config_hash(other, region2)


def test_generated_secret_is_random_unless_given(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    a, b = config.build_generated_secret(cluster), config.build_generated_secret(cluster)
    assert a["data"]["token"] != b["data"]["token"]
    fixed = config.build_generated_secret(cluster, token=b"t", admin=b"a")
    assert fixed["data"] == {"token": "dA==", "admin": "YQ=="}


def test_longest_names_fit_kubernetes_limits() -> None:
    body = cluster_body("c" * api.MAX_CLUSTER_NAME, "ns",
                        ("r" * api.MAX_REGION_NAME, "s" * api.MAX_REGION_NAME))
    cluster = api.parse(body)
    api.validate(cluster)
    for obj in manifests(body):
        assert len(obj["metadata"]["name"]) <= 63
        if obj["kind"] == "StatefulSet":
            assert len(obj["metadata"]["name"]) <= 52  # controller-revision-hash label


def test_token_secret_ref_replaces_the_generated_key(body: dict[str, Any]) -> None:
    body["spec"]["auth"] = {"tokenSecretRef": {"name": "shared-token"}}
    cluster = api.parse(body)
    refs = config.user_secret_refs(cluster, cluster.regions[0])
    assert api.SecretKeyRef("shared-token", "token") in refs
    assert all(r.name != "chat-generated" for r in refs)


def test_migrate_job(body: dict[str, Any]) -> None:
    body["spec"]["storage"] = {"credentialsSecretRef": {"name": "scylla-auth"}}
    cluster = api.parse(body)
    job = jobs.build_migrate_job(cluster)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["storage", "migrate"]
    assert container["envFrom"] == [{"configMapRef": {"name": "chat-eu-config"}}]
    assert {e["name"] for e in container["env"]} == {"CHATPLANE_CQL_USERNAME",
                                                     "CHATPLANE_CQL_PASSWORD"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["restartPolicy"] == "OnFailure"
    assert "ttlSecondsAfterFinished" not in job["spec"]


def test_migrate_job_name_follows_what_it_migrates(body: dict[str, Any]) -> None:
    name = jobs.migrate_job_name(api.parse(body))
    assert name.startswith("chat-migrate-")
    same = copy.deepcopy(body)
    same["spec"]["limits"] = {"maxFrameBytes": 4096}
    assert jobs.migrate_job_name(api.parse(same)) == name
    rf = copy.deepcopy(body)
    rf["spec"]["regions"][0]["cql"]["replicationFactor"] = 5
    assert jobs.migrate_job_name(api.parse(rf)) != name
    version = copy.deepcopy(body)
    version["spec"]["image"]["version"] = "0.2.0"
    assert jobs.migrate_job_name(api.parse(version)) != name


# Settings the operator sets that the data plane does not read yet (the CQL credentials /
# replication map of `chatplane storage migrate`).
PENDING_IN_DATA_PLANE = {"CHATPLANE_CQL_REPLICATION",
                         "CHATPLANE_CQL_USERNAME", "CHATPLANE_CQL_PASSWORD"}


ARCHIVE = {"afterDays": 7, "retentionDays": {"group": 365},
           "s3": {"endpoint": "https://s3.eu.example", "bucket": "chat-archive",
                  "prefix": "prod/", "credentialsSecretRef": {"name": "archive-keys"}}}


def test_the_archive_goes_to_the_bucket_with_keys_from_a_secret(body: dict[str, Any]) -> None:
    settings = pytest.importorskip("chatplane.settings")
    plain = api.parse(body)
    assert not any(k.startswith(("CHATPLANE_ARCHIVE", "CHATPLANE_RETENTION"))
                   for k in config.config_data(plain, plain.regions[0]))  # off unless asked
    body["spec"]["storage"] = {"archive": ARCHIVE}
    cluster = api.parse(body)
    region = cluster.regions[0]
    refs = config.secret_refs(cluster, region)
    assert refs["CHATPLANE_ARCHIVE_S3_ACCESS_KEY"] == api.SecretKeyRef("archive-keys", "accessKey")
    assert refs["CHATPLANE_ARCHIVE_S3_SECRET_KEY"] == api.SecretKeyRef("archive-keys", "secretKey")
    assert api.SecretKeyRef("archive-keys", "secretKey") in config.user_secret_refs(cluster, region)
    assert config.config_hash(cluster, region) != config.config_hash(plain, plain.regions[0])
    # what a pod gets is a configuration the data plane accepts, and means what the spec says
    env = {**config.config_data(cluster, region), "CHATPLANE_ARCHIVE_S3_ACCESS_KEY": "AK",
           "CHATPLANE_ARCHIVE_S3_SECRET_KEY": "SK"}
    archive = settings.load(environ=env).archive
    assert (archive.archive_s3_endpoint, archive.archive_s3_bucket, archive.archive_s3_prefix,
            archive.archive_s3_region) == ("https://s3.eu.example", "chat-archive", "prod/",
                                           "us-east-1")
    assert (archive.archive_after_days, archive.archive_interval_s) == (7, 3600)
    assert (archive.retention_days_direct, archive.retention_days_group,
            archive.retention_days_events) == (0, 365, 0)
    assert (archive.archive_s3_access_key, archive.archive_s3_secret_key) == ("AK", "SK")


def test_every_setting_is_one_the_data_plane_reads(body: dict[str, Any]) -> None:
    settings = pytest.importorskip("chatplane.settings")
    import dataclasses

    tree = settings.Settings()
    known = {settings.env_name(section.name, f.name)
             for section in dataclasses.fields(tree)
             for f in dataclasses.fields(getattr(tree, section.name))}
    body["spec"]["storage"] = {"credentialsSecretRef": {"name": "scylla-auth"},
                               "archive": ARCHIVE}
    body["spec"]["observability"] = {"otlpEndpoint": "http://otel:4317", "traceSampleRatio": 0.1}
    cluster = api.parse(body)
    region = cluster.regions[0]
    ours = set(config.config_data(cluster, region))
    assert config.config_data(cluster, region)["CHATPLANE_TRACE_SAMPLE_RATIO"] == "0.1"
    for tier in api.TIERS:
        ours |= {e["name"] for e in pods.container(cluster, region, tier)["env"]
                 if e["name"].startswith("CHATPLANE_")}
    pending = PENDING_IN_DATA_PLANE
    assert ours - known <= pending, sorted(ours - known - pending)


def test_peers_of_other_clusters_are_wired_into_every_region(body: dict[str, Any]) -> None:
    body["spec"]["peers"] = [{"name": "ap", "endpoint": "im.ap.example:9090",
                              "datacenter": "ap-south", "replicationFactor": 2}]
    body["spec"]["auth"] = {"tokenSecretRef": {"name": "shared-token", "key": "token"}}
    body["spec"]["regions"][1]["cql"]["replicationFactor"] = 0  # us: being decommissioned
    cluster = api.parse(body)
    api.validate(cluster)
    for region in cluster.regions:
        data = config.config_data(cluster, region)
        peers = json.loads(data["CHATPLANE_PEERS"])
        assert [p["name"] for p in peers] == [r.name for r in cluster.regions
                                              if r.name != region.name] + ["ap"]
        assert peers[-1] == {"name": "ap", "endpoint": "im.ap.example:9090",
                             "datacenter": "ap-south"}
        assert json.loads(data["CHATPLANE_CQL_REPLICATION"]) == {"eu": 3, "ap-south": 2}
        env = {e["name"]: e for e in config.secret_env(cluster, region)}
        assert env["CHATPLANE_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": "shared-token", "key": "token"}


def test_the_data_plane_reads_the_peer_list_the_operator_writes(body: dict[str, Any]) -> None:
    peerlist = pytest.importorskip("chatplane.peerlist")
    body["spec"]["peers"] = [{"name": "ap", "endpoint": "im.ap.example:9090",
                              "datacenter": "ap-south", "replicationFactor": 2}]
    body["spec"]["auth"] = {"tokenSecretRef": {"name": "shared-token", "key": "token"}}
    cluster = api.parse(body)
    for region in cluster.regions:
        data = config.config_data(cluster, region)
        peers = peerlist.parse(data["CHATPLANE_PEERS"], data["CHATPLANE_REGION"])
        assert [(p.name, p.endpoint, p.datacenter) for p in peers] == [
            (p["name"], p["endpoint"], p["datacenter"]) for p in config.peers(cluster, region)]
        assert data["CHATPLANE_CLUSTER"] == f"{cluster.namespace}/{cluster.name}"


def test_until_migrated_the_schema_tiers_are_created_without_pods(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    region = cluster.regions[0]
    im = workloads.build_deployment(cluster, region, "im")
    state = workloads.build_deployment(cluster, region, "state")
    assert jobs.gated(im)["spec"]["replicas"] == 0
    assert jobs.gated(im)["spec"]["template"] == im["spec"]["template"]
    assert im["spec"]["replicas"] > 0  # the builder's output is not changed
    assert jobs.gated(state) == state
    job = jobs.build_migrate_job(cluster)
    assert jobs.failure(job) is None and not jobs.migrated(job)
    job["status"] = {"conditions": [{"type": "Failed", "status": "True",
                                     "reason": "DeadlineExceeded", "message": "too slow"}]}
    assert jobs.failure(job) == ("DeadlineExceeded", "too slow")


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_the_data_plane_starts_on_the_durability_the_operator_writes(
        body: dict[str, Any], durability: str) -> None:
    """Regions on one keyspace in `sync` ack once a send's writes are in every datacenter:
    the data plane refuses to start on another write level (settings.up_problem), so the
    operator must write EACH_QUORUM with it; `async` needs no such level."""
    settings = pytest.importorskip("chatplane.settings")
    body["spec"]["replication"] = {"durability": durability}
    cluster = api.parse(body)
    api.validate(cluster)
    assert len(cluster.regions) > 1  # regions peer each other on the shared keyspace
    for region in cluster.regions:
        data = config.config_data(cluster, region)
        env = {k: v for k, v in data.items() if k not in PENDING_IN_DATA_PLANE}
        plane = settings.load(environ=env)
        assert plane.links.region_durability == durability
        assert settings.up_problem(plane) is None, settings.up_problem(plane)
        level = data.get("CHATPLANE_CQL_WRITE_CONSISTENCY", data["CHATPLANE_CQL_CONSISTENCY"])
        assert (level == "EACH_QUORUM") == (durability == "sync")


def test_one_region_without_peers_writes_at_its_own_level(body: dict[str, Any]) -> None:
    body["spec"]["regions"] = body["spec"]["regions"][:1]
    cluster = api.parse(body)
    api.validate(cluster)
    data = config.config_data(cluster, cluster.regions[0])
    assert data["CHATPLANE_REGION_DURABILITY"] == "sync"
    assert "CHATPLANE_CQL_WRITE_CONSISTENCY" not in data  # nothing to replicate to


def test_an_unknown_durability_is_refused(body: dict[str, Any]) -> None:
    body["spec"]["replication"] = {"durability": "eventually"}
    with pytest.raises(api.SpecError, match="durability must be sync or async"):
        api.validate(api.parse(body))
