"""The operator pod's environment holds only what the chart sets.

Kubernetes adds docker-link variables for every Service in the namespace unless a pod says
`enableServiceLinks: false`; the chart's `<release>-metrics` Service became
CHATPLANE_OPERATOR_METRICS_PORT=tcp://10.96.x.y:9100, which the operator reads as its metrics
port: on a real node (tests/node) the operator crash-looped at start with
`ValueError: invalid literal for int() with base 10: 'tcp://...'`.
"""

from __future__ import annotations

import kube_chart
import pytest

needs_helm = pytest.mark.skipif(kube_chart.helm() is None,
                                reason="helm not installed: run scripts/setup/30-kube.sh")


@needs_helm
@pytest.mark.parametrize("release", ["chatplane", "chatplane-operator"])
def test_operator_pod_has_no_service_links(release: str) -> None:
    objects = kube_chart.render(release=release)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
