"""Stand-ins for the Prometheus Operator's CRDs (monitoring.coreos.com/v1 ServiceMonitor,
PodMonitor, PrometheusRule), for installing the chart's monitoring objects on the test
apiserver. No copy of the upstream CRDs is available offline here, so these schemas list
only the upstream fields the chart uses, with their upstream names, types and required
lists; objects are created with strict field validation, so a misspelt or misplaced field is
refused. What they cannot check: fields upstream has and these omit (none are used)."""

from __future__ import annotations

from typing import Any

S: dict[str, Any] = {"type": "string"}
LABELS: dict[str, Any] = {"type": "object", "additionalProperties": S}
DURATION: dict[str, Any] = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?"
                            "(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
SELECTOR: dict[str, Any] = {"type": "object", "properties": {"matchLabels": LABELS}}
NAMESPACES: dict[str, Any] = {"type": "object", "properties": {
    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": S}}}
ENDPOINT: dict[str, Any] = {"type": "object", "properties": {
    "port": S, "path": S, "interval": DURATION}}
RULE: dict[str, Any] = {"type": "object", "required": ["expr"], "properties": {
    "alert": S, "record": S, "expr": {"x-kubernetes-int-or-string": True},
    "for": DURATION, "labels": LABELS, "annotations": LABELS}}
SPECS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {"type": "object", "required": ["selector"], "properties": {
        "selector": SELECTOR, "namespaceSelector": NAMESPACES,
        "endpoints": {"type": "array", "items": ENDPOINT}}},
    "PodMonitor": {"type": "object", "required": ["selector"], "properties": {
        "selector": SELECTOR, "namespaceSelector": NAMESPACES,
        "podMetricsEndpoints": {"type": "array", "items": ENDPOINT}}},
    "PrometheusRule": {"type": "object", "properties": {"groups": {
        "type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": S, "interval": DURATION,
            "rules": {"type": "array", "items": RULE}}}}}},
}


def crds() -> list[dict[str, Any]]:
    out = []
    for kind, spec in SPECS.items():
        plural = kind.lower() + "s"
        out.append({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                               "listKind": f"{kind}List"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object", "required": ["spec"],
                                             "properties": {"spec": spec}}}}]}})
    return out
