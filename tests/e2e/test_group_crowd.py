"""The Go crowd of `chatplane bench group --crowd go` against a real server.

It must check for real: a clean run through every way a large group reaches
its members (single pushes, compressed batches, head notices that need a
pull, a sync after a cut connection), and a reported loss when members wait
for a message that never comes."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chatplane.auth import ADMIN_SECRET_FILE, TokenSigner
from chatplane.bench import crowdgo
from chatplane.client import Client
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")]

# a small group is large here, and a batch over 20 messages becomes a head notice
ENV = {"CHATPLANE_LARGE_GROUP_THRESHOLD": "5", "CHATPLANE_GROUP_PUSH_MAX_MESSAGES": "20"}


@pytest.fixture
def large_server(data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir, env=ENV)
    proc.start()
    yield proc
    proc.stop()


def bench(server: ServerProcess, tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "w2.json"
    done = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "bench", "group", "--url", server.url,
         "--data-dir", str(server.data_dir), "--crowd", "go", "--senders", "2",
         "--deadline", "60", "--json", str(out), *extra],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["members_not_clean"] == 0 and result["missing_messages"] == 0
    assert result["crowd_stats"]["conflicting"] == 0 and result["crowd_stats"]["foreign"] == 0
    return result


def test_batches_and_head_notices_arrive_exactly_once(large_server: ServerProcess,
                                                      tmp_path: Path) -> None:
    # ~10 messages per 100 ms flush: compressed batches
    steady = bench(large_server, tmp_path, "--members", "200", "--messages", "150",
                   "--interval-ms", "10")
    assert steady["crowd_stats"]["batches"] > 0
    # far more than 20 per flush: head notices, and every member pulls
    burst = bench(large_server, tmp_path, "--members", "200", "--messages", "400",
                  "--interval-ms", "1")
    assert burst["crowd_stats"]["head_notices"] > 0
    assert burst["crowd_stats"]["pulls"] >= 200
    # the crowd is on TCP: its frames went out through the group writer thread
    assert writer_sockets(large_server) >= 200


def writer_sockets(server: ServerProcess) -> float:
    return metric(server, "chatplane_group_writer_sockets_total", required=True)


def test_cut_members_resume_with_sync(large_server: ServerProcess, tmp_path: Path) -> None:
    result = bench(large_server, tmp_path, "--members", "200", "--messages", "300",
                   "--interval-ms", "10", "--cut-every", "0.5", "--cut-fraction", "0.3")
    stats = result["crowd_stats"]
    assert stats["cuts"] > 0 and stats["sessions_lost"] >= stats["cuts"]
    # members came back, each through login with its cursor and a sync (a cut
    # that lands before a LoginAck ends a session that never logged in, so
    # count logins, not cuts)
    assert stats["logins"] > 200 and stats["syncs"] >= stats["logins"]


async def test_a_message_that_never_comes_is_reported(large_server: ServerProcess) -> None:
    members = [f"c{i}" for i in range(30)]
    secret = (large_server.data_dir / ADMIN_SECRET_FILE).read_text().strip()
    async with aiohttp.ClientSession() as http, http.post(
            large_server.admin_url + "/v1/admin/groups", headers={"Authorization": f"Bearer {secret}"},
            json={"name": "g", "owner": "owner", "members": members}) as r:
        assert r.status == 201
        group = (await r.json())["conversation_id"]
    signer = TokenSigner.from_data_dir(large_server.data_dir)
    crowd = await crowdgo.start(crowdgo.binary(), large_server.url,
                                [(m, signer.mint(m, "phone")) for m in members], group,
                                expect=4, deadline_s=5)
    assert crowd.stdout is not None
    assert await crowd.stdout.readline() == b"connected 30\n"
    owner = Client(large_server.url, signer.mint("owner", "phone"))
    await owner.connect()
    for text in ("one", "two"):  # seqs 2 and 3; the crowd waits for 4
        await owner.send_text(group, text)
    report = json.loads(await crowd.stdout.readline())
    await crowd.wait()
    await owner.close()
    assert report["bad"] == 30
    assert report["starts"] == {"1": 30}
    assert sorted(report["last_arrival"]) == ["1", "2", "3"]


def test_beside_direct_with_a_bound_server(large_server: ServerProcess, tmp_path: Path) -> None:
    """The harness tests/tools/beside.py: 1:1 alone, beside the group and alone
    again on the group's server, and alone and beside it on a second server
    that the group never touches."""
    bound = ServerProcess(tmp_path / "bound")
    bound.start()
    out = tmp_path / "beside.json"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.tools.beside", "--url", large_server.url,
             "--data-dir", str(large_server.data_dir), "--interval-ms", "20",
             "--direct-pairs", "4", "--direct-rate", "40", "--direct-duration", "2",
             "--bound-url", bound.url, "--bound-data-dir", str(bound.data_dir),
             "--json", str(out), "--", "--crowd", "go", "--senders", "2", "--members", "200",
             "--deadline", "60"],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        fanouts_on_bound = metric(bound, "chatplane_group_fanout_seconds_count")
    finally:
        bound.stop()
    direct = json.loads(out.read_text())
    assert direct["group"]["members_not_clean"] == 0 and direct["group"]["missing_messages"] == 0
    phases = ("alone_before", "bound_alone", "beside_group", "beside_bound", "alone_after")
    for phase in phases:
        assert direct[phase]["clean"], (phase, direct[phase])
        assert direct[phase]["acked"] > 0 and direct[phase]["p99_ms"] > 0
        # where a send's time went in the server's SQLite writer, per phase
        assert direct[phase]["server_storage_commit_ms_mean"] > 0, direct[phase]
        assert direct[phase]["server_storage_write_wait_ms_mean"] >= 0, direct[phase]
    # the five phases ran one after another, the two beside ones while the group sent
    windows = [direct[phase]["window"] for phase in phases]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(windows))
    assert direct["bound_p99_ratio"] == round(
        direct["beside_bound"]["p99_ms"] / direct["bound_alone"]["p99_ms"], 2)
    assert direct["all_clean"]
    # the group's server flushed the group; the bound server had no part in it
    assert metric(large_server, "chatplane_group_fanout_seconds_count", required=True) > 0
    assert fanouts_on_bound == 0


def test_a_bound_url_without_its_data_dir_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.tools.beside", "--url", "http://127.0.0.1:9",
         "--data-dir", str(tmp_path), "--bound-url", "http://127.0.0.1:10"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--bound-url needs --bound-data-dir" in done.stderr


def metric(server: ServerProcess, name: str, *, required: bool = False) -> float:
    with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    assert not required, f"no {name} in /metrics"
    return 0.0
