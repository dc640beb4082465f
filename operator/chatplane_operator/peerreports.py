"""One im pod's peer report (`GET /v1/peers`), as `reachability.summarize` takes it.

`podreading.py` reads every running im pod of every region once per pass (with the
gateways' counts, under one deadline); a pod that does not answer in time is reported as
silent, with why. Reading never fails a reconcile.
"""

from __future__ import annotations

from typing import Any

from chatplane_operator.reachability import PodReport


def pod_report(pod: str, body: Any, error: str = "") -> PodReport:
    """The report of `pod`: its body when it answered with a JSON object, else why not."""
    if error:
        return PodReport(pod, error=error)
    if not isinstance(body, dict):
        return PodReport(pod, error="not a peer report")
    return PodReport(pod, body)
