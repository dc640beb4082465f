"""The paced gateway rollout: a pure planner and an orchestrator over a narrow fleet interface.

A rollout replaces every gateway whose version is not the target, `maxUnavailable` at a
time: drain it (its clients are sent away at the policy's rate with jitter, by the gateway
itself), follow its live connection count, replace it when it is empty or at the drain
deadline, wait until the new one is ready, go on. A new gateway that is not ready within
`ready_timeout_s` *pauses* the rollout: nothing more is drained until it is ready (fixed by
a new version or by itself), then the rollout resumes where it stopped.

`plan()` decides the next step from what the fleet looks like now (no memory of its own),
so a restarted orchestrator resumes: a gateway already draining is followed, not drained
twice. `Fleet` is everything the orchestrator needs from the gateways; there is one
implementation over Kubernetes pods (`fleet_kube.py`) and the tests have one over real
`chatplane cluster up` processes. `GatewayAdmin` is the gateways' drain endpoint over HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Gateway:
    """One gateway as the fleet sees it now."""

    name: str
    version: str
    ready: bool
    connections: int = 0
    draining_since: float | None = None  # when its drain was started (None: not draining)
    started_at: float = 0.0  # when this instance was created (for the readiness timeout)
    ordinal: int = 0  # rollout order: highest ordinal first, as a StatefulSet does


@dataclasses.dataclass(frozen=True)
class Policy:
    rate: float  # connections per second a draining gateway sends away
    deadline_s: float  # longest a drain may take; the gateway is replaced then
    max_unavailable: int = 1
    ready_timeout_s: float = 120.0  # a new gateway not ready by then pauses the rollout


@dataclasses.dataclass(frozen=True)
class Step:
    """What to do next. `action` is one of `done`, `wait`, `drain`, `replace`, `pause`."""

    action: str
    names: tuple[str, ...] = ()
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a rollout stands, for `status` and logs."""

    target: str
    total: int
    updated: int
    draining: tuple[str, ...]
    connections_left: int
    paused: str = ""  # the reason, when paused

    @property
    def done(self) -> bool:
        return self.updated == self.total and not self.draining and not self.paused


def progress(gateways: Sequence[Gateway], target: str, step: Step) -> Progress:
    draining = [g for g in gateways if g.draining_since is not None]
    return Progress(
        target=target, total=len(gateways),
        updated=sum(1 for g in gateways if g.version == target and g.ready
                    and g.draining_since is None),
        draining=tuple(g.name for g in draining),
        connections_left=sum(g.connections for g in draining),
        paused=step.reason if step.action == "pause" else "")


def plan(gateways: Sequence[Gateway], target: str, policy: Policy, now: float,
         expected: int | None = None) -> Step:
    """The next step of the rollout to `target`, from the fleet as it is at `now`.

    `expected` is how many gateways there should be; fewer means a replaced one has not
    come back yet (it counts as unavailable)."""
    missing = max(0, (expected if expected is not None else len(gateways)) - len(gateways))
    finished = [g for g in gateways if g.draining_since is not None
                and (g.connections == 0 or now - g.draining_since >= policy.deadline_s)]
    if finished:
        return Step("replace", tuple(g.name for g in finished),
                    "drained" if all(g.connections == 0 for g in finished) else "deadline")
    broken = [g for g in gateways if g.version != target and not g.ready
              and g.draining_since is None and g.connections == 0]
    if broken:  # an old gateway that is down holds nobody: nothing to drain
        return Step("replace", tuple(g.name for g in broken), "not ready, no connections")
    stuck = [g for g in gateways if g.version == target and not g.ready
             and now - g.started_at >= policy.ready_timeout_s]
    if stuck:
        names = ", ".join(g.name for g in stuck)
        return Step("pause", tuple(g.name for g in stuck),
                    f"gateway {names} (version {target}) not ready after "
                    f"{policy.ready_timeout_s:.0f}s; the rollout drains nothing more until it is")
    unavailable = missing + sum(1 for g in gateways
                                if not g.ready or g.draining_since is not None)
    old = sorted((g for g in gateways if g.version != target and g.draining_since is None),
                 key=lambda g: (-g.ordinal, g.name))
    if not old:
        if unavailable:
            return Step("wait", reason="waiting for the last gateways to get ready")
        return Step("done")
    room = policy.max_unavailable - unavailable
    if room <= 0:
        return Step("wait", reason=f"{unavailable} gateway(s) unavailable")
    return Step("drain", tuple(g.name for g in old[:room]))


class Fleet(Protocol):
    """The gateways of one region, as the orchestrator drives them."""

    async def gateways(self) -> list[Gateway]: ...

    async def expected(self) -> int: ...

    async def start_drain(self, name: str, rate: float, deadline_s: float) -> None: ...

    async def replace(self, name: str, version: str) -> None:
        """Remove the drained gateway; a new one at `version` takes its place."""


@dataclasses.dataclass(frozen=True)
class AdminAccess:
    """How to reach a gateway's admin port: its admin secret (sent as `Authorization:
    Bearer`) and, for https, the TLS context (our CA, the operator's client certificate)."""

    secret: str = ""
    ssl: ssl.SSLContext | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}


class AdminRefused(OSError):
    """The gateway refused the call (401/403: a wrong or missing admin secret)."""


class GatewayAdmin:
    """A gateway's `POST /admin/drain {"rate","deadline_s"}` and `GET /admin/drain`, on its
    admin port (`url` is `http(s)://<pod IP>:<ports.admin>`), with the admin secret."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s

    def _call(self, url: str, access: AdminAccess,
              body: dict[str, float] | None = None) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url.rstrip("/") + "/admin/drain", data=data, method="POST" if body else "GET",
            headers={"Content-Type": "application/json", **access.headers()})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s,
                                        context=access.ssl) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise AdminRefused(f"{request.method} {request.full_url}: HTTP {exc.code} "
                                   f"(admin secret {'refused' if access.secret else 'missing'})"
                                   ) from None
            raise

    async def drain(self, url: str, rate: float, deadline_s: float,
                    access: AdminAccess = AdminAccess()) -> dict[str, object]:
        """Start the drain; the gateway's answer. Raises `AdminRefused` on 401/403 and
        OSError when it cannot be reached."""
        return await asyncio.to_thread(self._call, url, access,
                                       {"rate": rate, "deadline_s": deadline_s})

    async def connections(self, url: str, access: AdminAccess = AdminAccess()) -> int | None:
        """Connections left, or None when the gateway does not answer (it has exited)."""
        try:
            answer = await asyncio.to_thread(self._call, url, access)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return int(answer.get("connections", 0))  # type: ignore[call-overload]


@dataclasses.dataclass
class Outcome:
    """The end of `Orchestrator.run`: finished, or paused with a reason."""

    progress: Progress
    events: list[tuple[str, str]]  # (reason, message), one per gateway replaced
    seconds: float


class Orchestrator:
    """Runs the plan against a fleet. `tick()` does one step (the operator calls it once per
    reconcile pass); `run()` ticks until done or paused (the process-level tests)."""

    def __init__(self, fleet: Fleet, target: str, policy: Policy,
                 clock: Callable[[], float] = time.time) -> None:
        self.fleet = fleet
        self.target = target
        self.policy = policy
        self.clock = clock

    async def tick(self) -> tuple[Step, Progress, list[tuple[str, str]]]:
        gateways = await self.fleet.gateways()
        now = self.clock()
        step = plan(gateways, self.target, self.policy, now, await self.fleet.expected())
        events: list[tuple[str, str]] = []
        by_name = {g.name: g for g in gateways}
        if step.action == "drain":
            # all at once: each call waits for its gateway (up to the admin timeout when
            # one does not answer), and max_unavailable may allow several
            await asyncio.gather(*(self.fleet.start_drain(name, self.policy.rate,
                                                          self.policy.deadline_s)
                                   for name in step.names))
            for name in step.names:
                events.append(("GatewayDraining", f"draining {name} "
                               f"({by_name[name].connections} connections at "
                               f"{self.policy.rate:g}/s) for version {self.target}"))
        elif step.action == "replace":
            for name in step.names:
                g = by_name[name]
                took = now - (g.draining_since or now)
                await self.fleet.replace(name, self.target)
                events.append(("GatewayReplaced", f"replaced {name} after {took:.1f}s of drain "
                               f"({step.reason}, {g.connections} connections left)"))
        return step, progress(gateways, self.target, step), events

    async def run(self, timeout_s: float, poll_s: float = 0.2,
                  on_progress: Callable[[Progress], None] | None = None) -> Outcome:
        began = self.clock()
        events: list[tuple[str, str]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            step, now_progress, new = await self.tick()
            events += new
            if on_progress is not None:
                on_progress(now_progress)
            if step.action in ("done", "pause"):
                return Outcome(now_progress, events, self.clock() - began)
            if loop.time() > deadline:
                raise TimeoutError(f"rollout to {self.target} not finished in {timeout_s}s: "
                                   f"{now_progress}")
            if step.action == "wait" or step.action == "drain":
                await asyncio.sleep(poll_s)
