"""A small, independent Kubernetes REST client for the tests (stdlib urllib only).

Deliberately not the operator's own `applying` module: tests check the operator's effects
through a separate path.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from kube_controlplane import ControlPlane

PATHS: dict[str, tuple[str, str, bool]] = {  # kind -> (prefix, plural, namespaced)
    "Namespace": ("/api/v1", "namespaces", False),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions",
                                 False),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Service": ("/api/v1", "services", True),
    "Event": ("/api/v1", "events", True),
    "Pod": ("/api/v1", "pods", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ResourceQuota": ("/api/v1", "resourcequotas", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "StatefulSet": ("/apis/apps/v1", "statefulsets", True),
    "Job": ("/apis/batch/v1", "jobs", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "ChatCluster": ("/apis/chatplane.dev/v1alpha1", "chatclusters", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "KopfPeering": ("/apis/kopf.dev/v1", "kopfpeerings", True),
    "ClusterKopfPeering": ("/apis/kopf.dev/v1", "clusterkopfpeerings", False),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors", True),
    "PodMonitor": ("/apis/monitoring.coreos.com/v1", "podmonitors", True),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules", True),
}


class KubeError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


class Kube:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def path(self, kind: str, namespace: str | None = None, name: str | None = None,
             sub: str | None = None) -> str:
        prefix, plural, namespaced = PATHS[kind]
        out = prefix + (f"/namespaces/{namespace}" if namespaced and namespace else "")
        out += f"/{plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.plane.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.plane.token}", "Content-Type": content_type,
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.plane.ssl_context(), timeout=15) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"message": raw.decode(errors="replace")}
            raise KubeError(exc.code, payload) from None
        return json.loads(raw) if raw else {}

    def create(self, obj: dict[str, Any]) -> Any:
        meta = obj["metadata"]
        return self.request("POST", self.path(obj["kind"], meta.get("namespace")), obj)

    def apply(self, obj: dict[str, Any], manager: str = "tests") -> Any:
        meta = obj["metadata"]
        path = self.path(obj["kind"], meta.get("namespace"), meta["name"])
        return self.request("PATCH", f"{path}?fieldManager={manager}&force=true", obj,
                            "application/apply-patch+yaml")

    def get(self, kind: str, namespace: str | None, name: str) -> Any:
        try:
            return self.request("GET", self.path(kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, selector: str = "") -> list[Any]:
        query = "?labelSelector=" + urllib.parse.quote(selector) if selector else ""
        items: list[Any] = self.request("GET", self.path(kind, namespace) + query)["items"]
        return items

    def merge_patch(self, kind: str, namespace: str | None, name: str, patch: Any,
                    sub: str | None = None) -> Any:
        return self.request("PATCH", self.path(kind, namespace, name, sub), patch,
                            "application/merge-patch+json")

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        try:
            self.request("DELETE", self.path(kind, namespace, name))
        except KubeError as exc:
            if exc.status != 404:
                raise

    def crd_established(self, name: str) -> bool:
        crd = self.get("CustomResourceDefinition", None, name)
        conds = ((crd or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
