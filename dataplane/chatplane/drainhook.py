"""Start a gateway's paced drain and wait until it is empty: `chatplane drain`, and a gateway
pod's preStop hook (`python3 -m chatplane.drainhook --url http://127.0.0.1:<admin> --wait`).

The standard library only, on purpose: the hook runs inside the gateway's container, whose
CPU it shares, while the gateway drains. `chatplane drain` loads the whole CLI (tracing,
protobuf, storage: about a second of CPU); on a node under load a pod gets a small share of
the CPU and that import alone outlasted the termination grace period, so the kubelet killed
the container with the hook unfinished (FailedPreStopHook, issue 16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any


def admin_call(url: str, secret: str, method: str = "GET",
               body: dict[str, Any] | None = None) -> Any:
    """One admin API call (JSON in, JSON out); raises urllib.error.URLError."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None, method=method,
        headers={"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {secret}"} if secret else {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def http_error(exc: urllib.error.HTTPError) -> str:
    try:
        return f"{exc.code} {json.loads(exc.read()).get('error', '')}"
    except (ValueError, OSError, AttributeError):
        return str(exc)


def drain(base_url: str, secret: str, rate: float | None = None,
          deadline_s: float | None = None, wait: bool = False) -> int:
    """POST /admin/drain; with `wait`, poll until the gateway is empty. 0, or 1 (said on
    stderr) when the drain was refused or the gateway could not be reached."""
    body: dict[str, float] = {}
    if rate is not None:
        body["rate"] = rate
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    url = base_url.rstrip("/") + "/admin/drain"
    try:
        status = admin_call(url, secret, "POST", body)
        print(json.dumps(status), flush=True)
        while wait and status.get("connections", 0):
            time.sleep(0.5)
            try:
                status = admin_call(url, secret)
            except urllib.error.HTTPError:
                raise
            except (urllib.error.URLError, OSError) as exc:
                # a drained gateway exits (unless drain.exit_when_empty=0): gone is empty
                status = {"draining": True, "connections": 0, "gone": str(exc)}
        if wait:
            print(json.dumps(status), flush=True)
    except urllib.error.HTTPError as exc:
        print(f"chatplane: drain refused: {http_error(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"chatplane: drain failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m chatplane.drainhook",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the gateway's admin URL")
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--deadline", type=float, default=None)
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--admin-secret", default=None,
                        help="default: CHATPLANE_ADMIN_SECRET (the pod's env has it)")
    args = parser.parse_args(argv)
    secret = args.admin_secret or os.environ.get("CHATPLANE_ADMIN_SECRET", "")
    return drain(args.url, secret, args.rate, args.deadline, args.wait)


if __name__ == "__main__":
    sys.exit(main())
