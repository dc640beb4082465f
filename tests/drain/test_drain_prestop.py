"""A gateway pod's preStop hook, as real processes: `chatplane drain --wait` returns 0 once
its gateway is empty, and the gateway (`CHATPLANE_DRAIN_EXIT_WHEN_EMPTY=0`, as the operator
runs it) is still there when it does; the SIGTERM the kubelet sends next ends it.

Before, a drained gateway exited as soon as it was empty: in a pod that ended the container
with the hook's process still polling it, and the kubelet recorded FailedPreStopHook
(`exited with 137`) for every drained pod.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from chatplane.bench.idle import connect_all
from tests.cluster.conftest import ClusterFactory, connections


async def test_prestop_drain_returns_before_the_gateway_exits_and_sigterm_ends_it(
        make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(gateways=2, ims=1, states=1,
                           env={"CHATPLANE_DRAIN_EXIT_WHEN_EMPTY": "0"})
    raw, dispatcher, _ = await connect_all(cluster.dispatch_url, cluster.signer, 40, 200.0,
                                           "p", timeout_s=60)
    try:
        gateway = cluster.members["gw-1"]
        assert connections(cluster, "gw-1") > 0
        hook = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "chatplane.cli", "drain", "--url", gateway.admin_url,
             "--rate", "100", "--wait"],
            env={**os.environ, "CHATPLANE_ADMIN_SECRET": cluster.admin_secret},
            capture_output=True, text=True, timeout=60)
        assert hook.returncode == 0, hook.stderr
        assert '"connections": 0' in hook.stdout.splitlines()[-1], hook.stdout
        await asyncio.sleep(1.0)
        assert gateway.alive, "the drained gateway exited before its SIGTERM"
        assert connections(cluster, "gw-1") == 0  # it answers, empty
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(gateway.proc.wait, 15) == 0
        # every client moved to gw-2
        await asyncio.wait_for(asyncio.gather(*(c.resumed.wait() for c in raw)), 30)
        assert {c.gateway for c in raw} == {"gw-2"}
    finally:
        await asyncio.gather(*(c.close() for c in raw))
        await dispatcher.close()
