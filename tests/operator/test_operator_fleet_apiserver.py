"""Replacing a gateway pod on the real apiserver: by uid only, so a newer pod the StatefulSet
made under the same name survives a pass that read the old one; and a pod already being
deleted counts as missing, never as one to replace again (both seen on a real node)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kube_client import Kube
from kube_controlplane import ControlPlane
from kubernetes import config as k8s_config

from chatplane_operator import api, drain, podreading
from chatplane_operator.applying import Applier
from chatplane_operator.fleet_kube import KubeFleet

pytestmark = pytest.mark.kube


def _pod(name: str, finalizer: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app": "gw"},
                            "annotations": {"chatplane.dev/revision": "old"}}
    if finalizer:  # keeps it Terminating once deleted, as a preStop drain would
        meta["finalizers"] = ["chatplane.dev/test"]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "c", "image": "x"}]}}


def test_a_gateway_is_replaced_by_uid_and_a_terminating_one_not_again(
    plane: ControlPlane, kube: Kube, namespace: str, body: dict[str, Any],
) -> None:
    applier = Applier(k8s_config.new_client_from_config(config_file=str(plane.kubeconfig)))
    cluster = api.parse({**body, "metadata": {**body["metadata"], "namespace": namespace}})
    region = cluster.regions[0]
    old = kube.create({**_pod("gw-0"), "metadata": {**_pod("gw-0")["metadata"],
                                                     "namespace": namespace}})
    reads = podreading.RegionReads(gateways=(old,), connections={"gw-0": 0})
    fleet = KubeFleet(applier, cluster, region, drain.GatewayAdmin(), reads,
                      drain.AdminAccess())
    # the StatefulSet re-made gw-0 after this pass read it: the pass's replace spares it
    kube.delete("Pod", namespace, "gw-0")
    new = kube.create({**_pod("gw-0"), "metadata": {**_pod("gw-0")["metadata"],
                                                     "namespace": namespace}})
    asyncio.run(fleet.replace("gw-0", "new"))
    assert kube.get("Pod", namespace, "gw-0")["metadata"]["uid"] == new["metadata"]["uid"]
    asyncio.run(KubeFleet(applier, cluster, region, drain.GatewayAdmin(),
                          podreading.RegionReads(gateways=(new,)), drain.AdminAccess())
                .replace("gw-0", "new"))
    assert kube.get("Pod", namespace, "gw-0") is None  # the pod it read: deleted

    going = kube.create({**_pod("gw-1", finalizer=True),
                         "metadata": {**_pod("gw-1", True)["metadata"], "namespace": namespace}})
    kube.delete("Pod", namespace, "gw-1")
    going = kube.get("Pod", namespace, "gw-1")
    assert going["metadata"].get("deletionTimestamp")
    listed = KubeFleet(applier, cluster, region, drain.GatewayAdmin(),
                       podreading.RegionReads(gateways=(going,)), drain.AdminAccess())
    assert asyncio.run(listed.gateways()) == []  # missing: the plan waits, replaces nothing
    kube.merge_patch("Pod", namespace, "gw-1", {"metadata": {"finalizers": None}})
