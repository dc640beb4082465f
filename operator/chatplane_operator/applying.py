"""Kubernetes API I/O for the kinds the operator manages: server-side apply, get, list,
create-once, delete, status patches and Events.

Thin over `kubernetes.client.ApiClient.call_api`: the paths of the few kinds the operator
touches are in `KINDS`, so no discovery is needed. Everything here is synchronous; the
reconcile loop runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import urllib3
from kubernetes import client as k8s

from chatplane_operator import api

FIELD_MANAGER = "chatplane-operator"


@dataclasses.dataclass(frozen=True)
class Kind:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        out = f"{self.prefix}/namespaces/{namespace}/{self.plural}"
        if name:
            out += f"/{name}"
        if sub:
            out += f"/{sub}"
        return out


KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "Secret": Kind("/api/v1", "secrets"),
    "Service": Kind("/api/v1", "services"),
    "Event": Kind("/api/v1", "events"),
    "Pod": Kind("/api/v1", "pods"),
    "PodDisruptionBudget": Kind("/apis/policy/v1", "poddisruptionbudgets"),
    "Deployment": Kind("/apis/apps/v1", "deployments"),
    "StatefulSet": Kind("/apis/apps/v1", "statefulsets"),
    "Job": Kind("/apis/batch/v1", "jobs"),
    "NetworkPolicy": Kind("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Certificate": Kind("/apis/cert-manager.io/v1", "certificates"),
    api.KIND: Kind(f"/apis/{api.API_VERSION}", api.PLURAL),
    "KopfPeering": Kind("/apis/kopf.dev/v1", "kopfpeerings"),
    "ClusterKopfPeering": Kind("/apis/kopf.dev/v1", "clusterkopfpeerings"),
}


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when there was no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Applier:
    """The operator's API client for the kinds in `KINDS`."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = api_client

    def _call(
        self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        try:
            method, url, headers, payload, _ = self._api.param_serialize(
                method=method, resource_path=path, query_params=query or [],
                header_params=headers, body=body, auth_settings=["BearerToken"])
            response = self._api.call_api(method, url, header_params=headers, body=payload,
                                          _request_timeout=30)
            data = response.read()
        except k8s.exceptions.ApiException as exc:
            raise ApiError(int(exc.status or 0), str(exc.body or exc.reason or exc)) from exc
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # no answer from the server
            raise ApiError(0, str(exc)) from exc
        if not 200 <= response.status < 300:
            raise ApiError(response.status, _message(data))
        return json.loads(data) if data else {}

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` (owner: chatplane-operator, conflicts forced)."""
        meta = obj["metadata"]
        path = KINDS[obj["kind"]].path(meta["namespace"], meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        result: dict[str, Any] = self._call(
            "PATCH", path, obj, query, content_type="application/apply-patch+yaml")
        return result

    def _get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`; None when there is none (404)."""
        try:
            result: dict[str, Any] = self._call("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(KINDS[kind].path(namespace, name))

    def get_cluster_scoped(self, kind: str, name: str) -> dict[str, Any] | None:
        return self._get(f"{KINDS[kind].prefix}/{KINDS[kind].plural}/{name}")

    def list(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call("GET", KINDS[kind].path(namespace), query=[("labelSelector", selector)])
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create `obj` unless it exists; True when this call created it."""
        meta = obj["metadata"]
        try:
            self._call("POST", KINDS[obj["kind"]].path(meta["namespace"]), obj)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete `namespace/name`; with `uid`, only that object: a newer one of the same
        name (a StatefulSet pod re-created meanwhile) is left alone (the 409 is ignored)."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name), options)
        except ApiError as exc:
            if exc.status != 404 and not (uid and exc.status == 409):
                raise

    def merge_patch(self, kind: str, namespace: str, name: str,
                    patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PATCH", KINDS[kind].path(namespace, name), patch,
                                            content_type="application/merge-patch+json")
        return result

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        path = KINDS[api.KIND].path(namespace, name, "status")
        self._call("PATCH", path, {"status": status},
                   content_type="application/merge-patch+json")

    def event(self, owner: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Post a core/v1 Event about the ChatCluster `owner` (`kind`: Normal or Warning)."""
        meta = owner["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason, "message": message[:1024], "type": kind,
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER, "reportingInstance": FIELD_MANAGER,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._call("POST", KINDS["Event"].path(meta["namespace"]), event)


def _message(data: bytes | None) -> str:
    """The `message` of a metav1.Status answer, or the raw answer."""
    try:
        return str(json.loads(data or b"{}").get("message") or data)
    except (ValueError, AttributeError):
        return str(data)


def secret_has_key(secret: dict[str, Any] | None, key: str) -> bool:
    if secret is None:
        return False
    return key in (secret.get("data") or {}) or key in (secret.get("stringData") or {})
