"""The data plane's pods as the operator finds them, and what a gateway's count says.

Connections are read from each running gateway pod's `GET /admin/drain`, which answers
`{"draining": bool, "connections": N}` on its admin port (`ports.admin`) to the admin
secret (`admin_access()`; `podreading.py` does the reading, for every pod of a pass at
once). Running pods count whether ready or not: a draining gateway reports not-ready yet
still holds the connections it is sending away.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from chatplane_operator import api, drain
from chatplane_operator.applying import Applier
from chatplane_operator.specs import config, naming

log = logging.getLogger(__name__)


def tier_pods(applier: Applier, cluster: api.ChatCluster, region: api.Region,
              tier: str) -> list[dict[str, Any]]:
    """The pods of one tier of `region` (every phase)."""
    sel = ",".join(f"{k}={v}" for k, v in naming.selector(cluster, region, tier).items())
    return list(applier.list("Pod", cluster.namespace, sel))


def running_url(pod: dict[str, Any], port: int) -> str | None:
    """`http://<podIP>:<port>` of a running pod (terminating ones too: they may be
    draining); None while it has no IP or does not run."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") != "Running":
        return None
    host = f"[{ip}]" if ":" in str(ip) else ip
    return f"http://{host}:{port}"


def connections_in(body: Any) -> int | None:
    """The live connections a gateway's `/admin/drain` body reports; None if it is not one."""
    if not isinstance(body, dict):
        return None
    try:
        return int(body.get("connections", 0))
    except (TypeError, ValueError):
        return None


def admin_access(applier: Applier, cluster: api.ChatCluster) -> drain.AdminAccess:
    """The admin secret of `cluster`'s pods, from its generated Secret (the pods read the
    same key as CHATPLANE_ADMIN_SECRET); no secret when it cannot be read."""
    ref = config.admin_ref(cluster)
    secret = applier.get("Secret", cluster.namespace, ref.name)
    data = (secret or {}).get("data") or {}
    if ref.key not in data:
        log.warning("no admin secret in Secret %s/%s: drain calls will be refused",
                    cluster.namespace, ref.name)
        return drain.AdminAccess()
    return drain.AdminAccess(secret=base64.b64decode(data[ref.key]).decode())
