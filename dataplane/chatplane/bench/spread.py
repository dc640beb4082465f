"""Running W1 here or spread over several processes, with real SDK clients.

`run_local` runs every pair in this process. `run_spread` starts N copies of
this module (`python -m chatplane.bench.spread CONFIG_JSON`), each with its own
slice of the pairs and 1/N of the rate; a worker connects its clients, says
`ready`, waits for `go` on stdin (so all slices start offering together),
streams progress snapshots and finally its result, one JSON object per stdout
line. The parent merges the snapshots into one progress line and the results
into one result (`report.merge_results`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from chatplane.bench import report
from chatplane.bench.direct import Connector, DirectConfig, DirectRun, Progress, SetupError

T = TypeVar("T")


def token_signer(data_dir: str) -> Any:
    """The server's token signer, as `chatplane token` finds it: the key set of the
    environment (CHATPLANE_TOKEN_KEYS_FILE, CHATPLANE_TOKEN_KEYS, CHATPLANE_TOKEN_SECRET:
    what peer regions share, so one signer mints for every region), else the key file
    in the server's data dir (SetupError if it cannot be read)."""
    from pathlib import Path

    from chatplane import settings as settings_mod
    from chatplane.auth import TOKEN_KEY_FILE, TokenSigner

    try:
        settings = settings_mod.load({"storage": {"data_dir": data_dir}})
        configured = settings.tokens.keys_file or settings.tokens.keys or settings.server.token_secret
        if configured:
            return TokenSigner.configured(settings)
    except (settings_mod.SettingsError, OSError, ValueError) as exc:
        raise SetupError(f"cannot read the token keys of the environment: {exc}") from exc
    if not (Path(data_dir) / TOKEN_KEY_FILE).is_file():
        raise SetupError(f"no {TOKEN_KEY_FILE} in {data_dir}: give the server's --data-dir "
                         "(or its CHATPLANE_TOKEN_SECRET in the environment)")
    try:
        return TokenSigner.from_data_dir(data_dir)
    except (OSError, ValueError) as exc:
        raise SetupError(f"cannot read the token key of {data_dir}: {exc}") from exc


def sdk_connector(url: str, data_dir: str, transport: str, ca: str = "") -> Connector:
    """Clients of the real SDK, each with a token minted from the server's data dir."""
    from chatplane.client import Client

    signer = token_signer(data_dir)

    def make(user: str, device: str) -> Any:
        return Client(url, signer.mint(user, device), transport=transport, ca=ca or None)

    return make


def connector_for(spec: dict[str, Any], receiving: bool = False) -> Connector:
    """The clients a run spec asks for: `lean` (raw TCP at spec["tcp"]) or the `sdk`;
    `receiving`: the receiving side's, at spec["receiver_url"] (and "receiver_tcp")
    when the spec names another region's server."""
    across = receiving and bool(spec.get("receiver_url"))
    if spec.get("client", "sdk") == "lean":
        from chatplane.bench.leanclient import lean_connector

        host, port = spec["receiver_tcp" if across else "tcp"]
        return lean_connector(host, int(port), spec["data_dir"])
    url = spec["receiver_url"] if across else spec["url"]
    return sdk_connector(url, spec["data_dir"], spec["transport"], spec.get("ca", ""))


def run_loop(main: Coroutine[Any, Any, T], use_uvloop: bool = True) -> T:
    """Run `main` on uvloop when asked and available, else on asyncio's loop."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)


async def run_local(
    cfg: DirectConfig,
    connector: Connector,
    on_progress: Progress,
    start_gate: Callable[[], Awaitable[None]] | None = None,
    receive_connector: Connector | None = None,
) -> dict[str, Any]:
    run = DirectRun(cfg, connector, on_progress, receive_connector)
    if start_gate is None:
        return await run.run()
    return await run.run(start_gate)


def _slice(cfg: DirectConfig, index: int, count: int) -> DirectConfig:
    pairs = cfg.pairs // count + (1 if index < cfg.pairs % count else 0)
    return dataclasses.replace(
        cfg,
        pairs=pairs,
        rate=cfg.rate * pairs / cfg.pairs,
        user_prefix=f"{cfg.user_prefix}p{index}",
        metrics_url=cfg.metrics_url if index == 0 else "",  # one reading, not one per slice
        lag_metrics_url=cfg.lag_metrics_url if index == 0 else "",
        cpu_pids=cfg.cpu_pids if index == 0 else {},
    )


async def run_spread(
    cfg: DirectConfig, base: dict[str, Any], procs: int, on_progress: Progress
) -> dict[str, Any]:
    """Run W1 over `procs` worker processes and merge what they report.

    `base` is the run spec without its config: url, data_dir, transport,
    client (and tcp for lean clients), uvloop."""
    connector_for(base)  # a bad --data-dir fails here, once
    workers = []
    for i in range(procs):
        spec = {**base, "config": dataclasses.asdict(_slice(cfg, i, procs))}
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chatplane.bench.spread",
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,
            )
        )
    snaps: dict[int, dict[str, Any]] = {}
    results: dict[int, dict[str, Any]] = {}
    ready: set[int] = set()
    all_ready = asyncio.Event()
    last_print = 0.0

    async def follow(i: int, proc: asyncio.subprocess.Process) -> None:
        nonlocal last_print
        assert proc.stdout is not None
        async for raw in proc.stdout:
            msg = json.loads(raw)
            if "ready" in msg:
                ready.add(i)
                if len(ready) == procs:
                    all_ready.set()
            elif "progress" in msg:
                snaps[i] = msg["progress"]
                if time.monotonic() - last_print >= 0.9 and len(snaps) == procs:
                    last_print = time.monotonic()
                    on_progress(report.merge_snapshots(snaps.values()))
            elif "result" in msg:
                results[i] = msg["result"]

    followers = [asyncio.create_task(follow(i, p)) for i, p in enumerate(workers)]
    try:
        waiting = asyncio.create_task(all_ready.wait())
        done, _ = await asyncio.wait(
            [waiting, *followers],
            timeout=cfg.connect_timeout + 10,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiting not in done:
            waiting.cancel()
            raise RuntimeError(f"only {len(ready)} of {procs} bench workers got ready")
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        bound = cfg.duration + 2 * cfg.drain_timeout + 30
        async with asyncio.timeout(bound):
            await asyncio.gather(*followers)
            for proc in workers:
                await proc.wait()
    finally:
        for proc in workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    if len(results) != procs:
        raise RuntimeError(f"only {len(results)} of {procs} bench workers reported a result")
    return report.merge_results([results[i] for i in range(procs)])


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _worker(spec: dict[str, Any]) -> None:
    cfg = DirectConfig(**spec["config"])
    connector = connector_for({**spec, "ca": cfg.ca})

    async def gate() -> None:
        _emit({"ready": cfg.pairs})
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != "go":
            raise RuntimeError("bench worker: no go from the parent")

    receive = connector_for({**spec, "ca": cfg.ca}, receiving=True)
    result = await run_local(cfg, connector, lambda snap: _emit({"progress": snap}), gate, receive)
    _emit({"result": result})


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    try:
        run_loop(_worker(spec), bool(spec.get("uvloop", True)))
    except SetupError as exc:
        print(f"bench worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
