#!/usr/bin/env python3
"""Packs a root filesystem into a docker-archive that `ctr images import` (and `docker load`)
accept: one uncompressed layer, a hand-written image config and manifest.json.

The config is what the Dockerfile declares: user 10001, entrypoint `chatplane`, the venv at
/opt/chatplane first on PATH, working directory /data. Used by scripts/image/build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

ENV = [
    "PATH=/opt/chatplane/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "LANG=C.UTF-8",
]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _layer(rootfs: Path, out: Path) -> None:
    # /dev, /proc and /sys stay empty directories: the runtime mounts them.
    subprocess.run(
        ["tar", "-C", str(rootfs), "--numeric-owner", "--sort=name", "--mtime=@0",
         "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
         "-cf", str(out), "."],
        check=True)


def pack(rootfs: Path, tag: str, out: Path, entrypoint: list[str], cmd: list[str], user: str,
         workdir: str) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        work = Path(tmp)
        layer = work / "layer.tar"
        _layer(rootfs, layer)
        diff_id = _sha256(layer)
        layer_name = f"{diff_id}/layer.tar"
        (work / diff_id).mkdir()
        layer.rename(work / layer_name)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": user,
                "Entrypoint": entrypoint,
                "Cmd": cmd,
                "Env": ENV,
                "WorkingDir": workdir,
                "ExposedPorts": {"8080/tcp": {}, "8081/tcp": {}, "9090/tcp": {}},
                "Labels": {"org.opencontainers.image.source": "scripts/image/build"},
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created_by": "scripts/image/build (mmdebstrap + venv from wheels)"}],
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        (work / config_name).write_bytes(config_bytes)
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]
        (work / "manifest.json").write_text(json.dumps(manifest))
        tmp_out = out.with_suffix(".partial")
        with tarfile.open(tmp_out, "w") as archive:
            for name in ("manifest.json", config_name, diff_id):
                archive.add(work / name, arcname=name)
        tmp_out.rename(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs", type=Path, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--entrypoint", default="chatplane", help="space-separated")
    parser.add_argument("--cmd", default="--help", help="space-separated")
    parser.add_argument("--user", default="10001:10001")
    parser.add_argument("--workdir", default="/data")
    args = parser.parse_args()
    pack(args.rootfs, args.tag, args.out, args.entrypoint.split(), args.cmd.split(), args.user,
         args.workdir)


if __name__ == "__main__":
    main()
