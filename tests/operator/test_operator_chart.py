"""The Helm chart and the CRD files: helm lint, helm template for Kubernetes 1.29-1.33 with
every rendered object validated strictly, labels, values schema, CRD files in sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kube_chart import CHART, helm, render, run

from chatplane_operator import crd

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
needs_helm = pytest.mark.skipif(helm() is None, reason="helm not installed: run "
                                "scripts/setup/30-kube.sh")


def test_crd_files_are_generated_from_the_api() -> None:
    generated = crd.dump()
    assert (ROOT / "crds" / "chatclusters.chatplane.dev.yaml").read_text() == generated
    assert (CHART / "crds" / "chatclusters.chatplane.dev.yaml").read_text() == generated
    peering = crd.dump_peering()
    assert (ROOT / "crds" / "kopfpeerings.kopf.dev.yaml").read_text() == peering
    assert (CHART / "crds" / "kopfpeerings.kopf.dev.yaml").read_text() == peering


@pytest.mark.parametrize("version", [v[:4] for v in VERSIONS])
def test_crd_validates_strictly(version: str) -> None:
    for obj in [crd.build_crd(), *crd.build_peering_crds()]:
        kubernetes_validate.validate(obj, version, strict=True)


def _validate(obj: dict[str, Any], version: str) -> None:
    """Built-in kinds by kubernetes-validate; kopf.dev peerings by their CRD's schema."""
    if obj["apiVersion"] == "kopf.dev/v1":
        (schema,) = [c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                     for c in crd.build_peering_crds()
                     if c["spec"]["names"]["kind"] == obj["kind"]]
        jsonschema.validate(obj, schema)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def test_example_matches_the_crd_schema(example: dict[str, Any]) -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(example, schema)


@needs_helm
def test_helm_lint_strict() -> None:
    done = run("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@needs_helm
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("sets", [
    (), ("watchNamespaces={chat,chat-staging}",),
    ("peering.enabled=true", "replicaCount=2"),
    ("peering.enabled=true", "replicaCount=2", "watchNamespaces={chat}"),
], ids=["clusterwide", "namespaced", "peered", "peered-namespaced"])
def test_rendered_objects_validate_strictly(version: str, sets: tuple[str, ...]) -> None:
    objs = render(version, sets=sets)
    kinds = sorted(o["kind"] for o in objs)
    namespaces = [s for s in sets if s.startswith("watchNamespaces")]
    if namespaces:
        assert kinds.count("Role") == namespaces[0].count(",") + 1
        assert "ClusterRole" not in kinds
    else:
        assert {"ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    if "peering.enabled=true" in sets:
        assert ("KopfPeering" if namespaces else "ClusterKopfPeering") in kinds
    assert {"CustomResourceDefinition", "ServiceAccount", "Deployment", "Service"} <= set(kinds)
    for obj in objs:
        _validate(obj, version[:4])


@needs_helm
def test_rendered_objects_are_labelled() -> None:
    for obj in render(crds=False):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "chatplane"
        assert labels["app.kubernetes.io/instance"] == "chatplane"
        assert labels["app.kubernetes.io/component"] == "operator"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "chatplane"


@needs_helm
def test_operator_pod_is_hardened_and_single() -> None:
    (dep,) = [o for o in render(crds=False) if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["command"] == ["python", "-m", "chatplane_operator"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


@needs_helm
def test_rbac_is_least_privilege() -> None:
    (role,) = [o for o in render(crds=False) if o["kind"] == "ClusterRole"]
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    # never list/watch every Secret; patch: renewed certificates, rotated token keys
    assert verbs[("", "secrets")] == {"get", "create", "patch"}
    assert ("cert-manager.io", "certificates") not in verbs  # only with certManager.enabled
    assert verbs[("chatplane.dev", "chatclusters")] == {"get", "list", "watch"}
    assert all("*" not in v for v in verbs.values())
    assert all(r not in ("pods/exec", "nodes", "namespaces") for _, r in verbs)


@needs_helm
@pytest.mark.parametrize("bad", ["replicaCount=2", "image.pullPolicy=Sometimes",
                                 "peering.name=Not_A_Name",
                                 "watchNamespaces={Bad_Name}", "unknownKey=1",
                                 "operator.readDeadlineSeconds=0", "operator.readDeadlineSeconds=soon"])
def test_values_schema_refuses_bad_values(bad: str) -> None:
    done = run("template", "x", str(CHART), "--kube-version", "1.33.0", "--set", bad)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr


def test_values_file_matches_its_schema() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)


@needs_helm
def test_chart_args_are_understood_by_the_operator() -> None:
    from chatplane_operator.__main__ import parse_args

    sets = ("watchNamespaces={chat,chat-staging}", "operator.resyncSeconds=45",
            "operator.readDeadlineSeconds=2.5")
    (dep,) = [o for o in render(crds=False, sets=sets) if o["kind"] == "Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    args = parse_args(container["args"])
    assert args.namespace == ["chat", "chat-staging"]
    assert args.metrics_address == "0.0.0.0"
    assert args.metrics_port == 9100
    assert args.liveness == "http://0.0.0.0:8080/healthz"
    assert args.resync_seconds == 45
    assert args.read_deadline_seconds == 2.5
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9100, "health": 8080}


@needs_helm
def test_peered_operator_rolls_and_may_patch_its_peering() -> None:
    objs = render(crds=False, sets=("peering.enabled=true", "replicaCount=2"))
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--peering=chatplane" in container["args"]
    assert container["env"][0]["name"] == "POD_NAME"
    (role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    (rule,) = [r for r in role["rules"] if r["apiGroups"] == ["kopf.dev"]]
    assert rule["resources"] == ["clusterkopfpeerings"]


@needs_helm
def test_cert_manager_rbac_and_the_operators_network_policy() -> None:
    (role,) = [o for o in render(crds=False, sets=("certManager.enabled=true",))
               if o["kind"] == "ClusterRole"]
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert "create" in verbs[("cert-manager.io", "certificates")]
    assert "list" in verbs[("networking.k8s.io", "networkpolicies")]
    (policy,) = [o for o in render(crds=False) if o["kind"] == "NetworkPolicy"]
    ports = sorted(p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"])
    assert ports == [8080, 9100]  # health, metrics: nothing else reaches the operator
    # the labels a ChatCluster's NetworkPolicy admits to its admin ports by default
    from chatplane_operator import api

    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert api.NetworkPolicy().operator_labels.items() <= selected.items()
    assert not [o for o in render(crds=False, sets=("networkPolicy.enabled=false",))
                if o["kind"] == "NetworkPolicy"]
