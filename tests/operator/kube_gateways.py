"""Stand-ins for what does not run next to the test apiserver: the StatefulSet controller
and kubelet for the gateway pods, and the gateways' drain endpoint.

`GatewayPods` plays the StatefulSet controller (OnDelete): a missing ordinal is created
again from the StatefulSet's *current* template, and it plays the kubelet by setting the
pod Running with podIP 127.0.0.1 and Ready (or not, for a version the test calls broken).
`FakeDrainEndpoint` answers `POST/GET /admin/drain` on 127.0.0.1 for every pod (they all
share that IP here, so it models the one pod that is draining: it sends its `connections`
away at the requested rate). The real endpoint is exercised by `tests/drain/` against real
gateway processes; this one only lets the operator's rollout run where no gateway can.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

from kube_client import Kube

SELECTOR = "app.kubernetes.io/component=gateway"
REVISION = "chatplane.dev/revision"


class FakeDrainEndpoint:
    def __init__(self, connections: int) -> None:
        self.connections = connections
        self.started: float | None = None
        self.rate = 1.0
        self.posts: list[dict[str, Any]] = []
        self.authorizations: list[str] = []  # the Authorization header of every call
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200 if self.path == "/admin/drain" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.authorizations.append(self.headers.get("Authorization", ""))
                self._answer({"draining": outer.started is not None, "connections": outer.left()})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.authorizations.append(self.headers.get("Authorization", ""))
                outer.posts.append(body)
                outer.rate, outer.started = float(body["rate"]), time.monotonic()
                self._answer({"draining": True, "connections": outer.left()})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def left(self) -> int:
        if self.started is None:
            return self.connections
        return max(0, self.connections - int(self.rate * (time.monotonic() - self.started)))

    def reset(self) -> None:
        self.started = None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GatewayPods:
    def __init__(self, kube: Kube, namespace: str, sts: str, drain: FakeDrainEndpoint,
                 broken: set[str] | None = None) -> None:
        self.kube, self.namespace, self.sts, self.drain = kube, namespace, sts, drain
        # image versions whose pods never get ready (a revision is "<version>-<digest>")
        self.broken = broken if broken is not None else set()
        self.created: list[tuple[str, str]] = []  # (pod, revision), in order
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def revision(self) -> str:
        sts = self.kube.get("StatefulSet", self.namespace, self.sts)
        return str(sts["spec"]["template"]["metadata"]["annotations"][REVISION])

    def pods(self) -> dict[str, Any]:
        return {p["metadata"]["name"]: p
                for p in self.kube.list("Pod", self.namespace, SELECTOR)}

    def set_ready(self, name: str, ready: bool) -> None:
        self.kube.merge_patch("Pod", self.namespace, name, {"status": {
            "phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}},
            sub="status")

    def sync(self) -> None:
        """One pass of the StatefulSet controller and the kubelet."""
        sts = self.kube.get("StatefulSet", self.namespace, self.sts)
        template = sts["spec"]["template"]
        have = self.pods()
        for i in range(int(sts["spec"]["replicas"])):
            name = f"{self.sts}-{i}"
            if name in have:
                continue
            revision = template["metadata"]["annotations"][REVISION]
            self.kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": self.namespace,
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"]},
                "spec": template["spec"]})
            self.drain.reset()  # the new pod holds its share of the clients again
            self.set_ready(name, revision.rsplit("-", 1)[0] not in self.broken)
            self.created.append((name, revision))
        ready = sum(1 for p in self.pods().values()
                    if any(c.get("type") == "Ready" and c.get("status") == "True"
                           for c in (p.get("status") or {}).get("conditions") or []))
        n = int(sts["spec"]["replicas"])
        self.kube.merge_patch("StatefulSet", self.namespace, self.sts, {"status": {
            "observedGeneration": sts["metadata"]["generation"], "replicas": n,
            "readyReplicas": ready, "updatedReplicas": n, "availableReplicas": ready}},
            sub="status")

    def _loop(self) -> None:
        while not self.stop.wait(0.1):
            try:
                self.sync()
            except Exception as exc:  # a conflict with the operator's writes: next round
                print(f"gateway pods: {exc}")

    def __enter__(self) -> GatewayPods:
        self.sync()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
