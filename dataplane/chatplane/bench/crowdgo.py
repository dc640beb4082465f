"""The Go crowd of `chatplane bench group --crowd go`: built once, then run.

Ten thousand SDK clients measure the load generator more than the server
(each decodes, orders and queues every push in Python, on the same cores as
the server). `crowd_go/` is a lean client of the same protocol in Go: raw
TCP, dispatch, login with the inbox cursor, sync with a cursor for the
group, pushes (single, compressed batch, head notices that need a pull),
acks, heartbeats, reconnects; every member checks that it delivers each seq
from where it joined exactly once and in order (its rules are those of
`delivery/sync.py`). It is built with the Go toolchain on first use into
`~/.cache/chatplane/crowd-<hash of its sources>` (`$XDG_CACHE_HOME` is
honoured).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

SOURCE = Path(__file__).with_name("crowd_go")
RESULT_LIMIT = 1 << 24  # a result line carries an arrival time per seq


class CrowdUnavailable(RuntimeError):
    """The Go crowd cannot be built here."""


def _digest() -> str:
    h = hashlib.sha256()
    for path in sorted([*SOURCE.glob("*.go"), SOURCE / "go.mod", SOURCE / "go.sum"]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def binary() -> Path:
    """The crowd's executable, built now if this version was never built."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatplane"
    target = cache / f"crowd-{_digest()}"
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise CrowdUnavailable(
            "--crowd go builds its crowd with the Go toolchain, and `go` is not on PATH: "
            "install Go 1.22 or later (https://go.dev/dl/), or use --crowd sdk")
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"{target.name}.{os.getpid()}.partial"
    built = subprocess.run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=SOURCE,
                           capture_output=True, text=True, check=False)
    if built.returncode != 0:
        partial.unlink(missing_ok=True)
        raise CrowdUnavailable(f"building the Go crowd failed:\n{built.stderr.strip()}")
    partial.replace(target)
    for stale in cache.glob("crowd-*"):  # builds of older sources
        if stale != target and not stale.name.endswith(".partial"):
            stale.unlink(missing_ok=True)
    return target


async def start(executable: Path, url: str, tokens: Sequence[tuple[str, str]], group: str,
                expect: int, deadline_s: float, cores: int = 1,
                cut_every_s: float = 0.0, cut_fraction: float = 0.1,
                nice: int = 0) -> asyncio.subprocess.Process:
    """One crowd process for these (user, token) members, on at most `cores`
    cores; with `cut_every_s`, it cuts that share of its members' connections
    that often (they come back and sync); `nice` lowers its priority (it
    stands for devices on other machines). It prints `connected N`, then one
    JSON line (see crowd_go/main.go)."""
    proc = await asyncio.create_subprocess_exec(
        str(executable), "-url", url, "-group", group, "-expect", str(expect),
        "-deadline", str(deadline_s), "-cut-every", str(cut_every_s),
        "-cut-fraction", str(cut_fraction),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=RESULT_LIMIT,
        env={**os.environ, "GOMAXPROCS": str(max(1, cores))},
        preexec_fn=(lambda: os.nice(nice)) if nice else None)
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{user} {token}\n" for user, token in tokens).encode())
    await proc.stdin.drain()
    proc.stdin.close()
    return proc
