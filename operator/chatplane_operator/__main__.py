"""`python -m chatplane_operator`: run the operator (kopf) with its metrics endpoint."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import socket

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from chatplane_operator import handlers, logs, metrics
from chatplane_operator.applying import Applier
from chatplane_operator.peering import PeeringGate
from chatplane_operator.podreading import HttpReader
from chatplane_operator.reconciling import Reconciler


def _api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    return k8s.ApiClient()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="chatplane-operator", description=__doc__)
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable); default: every namespace")
    p.add_argument("--metrics-address", default=env("CHATPLANE_OPERATOR_METRICS_ADDRESS",
                                                    "127.0.0.1"))
    p.add_argument("--metrics-port", type=int,
                   default=int(env("CHATPLANE_OPERATOR_METRICS_PORT", "9100")),
                   help="Prometheus /metrics port; 0 disables it")
    p.add_argument("--liveness", default=env("CHATPLANE_OPERATOR_LIVENESS", ""),
                   help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--resync-seconds", type=float,
                   default=float(env("CHATPLANE_OPERATOR_RESYNC_SECONDS", "60")),
                   help="seconds between full passes (drift repair, connection counts)")
    p.add_argument("--read-deadline-seconds", type=float,
                   default=float(env("CHATPLANE_OPERATOR_READ_DEADLINE_SECONDS", "1")),
                   help="how long a pass waits for the data plane's pods to answer (connection "
                        "counts, peer reports): one deadline for all of them at once")
    p.add_argument("--log-level", default=env("CHATPLANE_OPERATOR_LOG_LEVEL", "INFO"))
    p.add_argument("--log-format", default=env("CHATPLANE_OPERATOR_LOG_FORMAT", "text"),
                   help="text, or json: one JSON object per line")
    p.add_argument("--peering", default=env("CHATPLANE_OPERATOR_PEERING", ""),
                   help="kopf peering object name: replicas elect one active operator; "
                        "default: standalone (one replica)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority (highest works, others pause); default: "
                        "derived from POD_NAME, so replicas differ")
    return p.parse_args(argv)


def priority(explicit: int | None, pod_name: str) -> int:
    """A replica's peering priority: explicit, or a stable hash of its pod name (kopf
    pauses every operator whose priority equals another's, so replicas must differ)."""
    if explicit is not None:
        return explicit
    digest = hashlib.sha256(pod_name.encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % 1_000_000


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if args.log_level.upper() != "DEBUG":  # one "succeeded" line per watch event is noise
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    applier = Applier(_api_client())
    runtime = handlers.Runtime(
        reconciler=Reconciler(applier, HttpReader(applier, args.read_deadline_seconds)),
        resync=args.resync_seconds)
    metrics.serve(args.metrics_address, args.metrics_port)
    common = {"clusterwide": not args.namespace, "namespaces": args.namespace,
              "liveness_endpoint": args.liveness or None, "memo": kopf.Memo(runtime=runtime)}
    if args.peering:
        pod = os.environ.get("POD_NAME") or socket.gethostname()
        prio = priority(args.priority, pod)
        runtime.gate = PeeringGate(applier, args.peering, prio, args.namespace)
        kopf.run(peering_name=args.peering, priority=prio, **common)
    else:
        kopf.run(standalone=True, **common)


if __name__ == "__main__":
    main()
