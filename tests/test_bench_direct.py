"""`chatplane bench direct` (W1) against a real `chatplane up`: a short small run is clean.

The server is a real process (tests/support/server.py: temp data dir, free
ports), one for the module (each run uses fresh users), and the bench runs as
its own process through the CLI, exactly as a person would run it; the JSON
result it writes is what is asserted on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("bench") / "data"
    data_dir.mkdir()
    proc = ServerProcess(data_dir)
    proc.start()
    yield proc
    proc.stop()


def _bench(server: ServerProcess, out: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    args = [
        sys.executable, "-m", "chatplane.cli", "bench", "direct",
        "--url", server.url, "--data-dir", str(server.data_dir),
        "--json", str(out), "--drain-timeout", "5", *extra,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    text = done.stdout + done.stderr
    assert out.exists(), text
    return done.returncode, text, json.loads(out.read_text())


def _assert_clean(rc: int, text: str, result: dict[str, Any], expected: int, devices: int = 1) -> None:
    assert rc == 0, text
    assert result["clean"], text
    verdict = result["verdict"]
    assert verdict["ok"], text
    assert verdict["same_order"]
    for kind in ("lost", "duplicated", "reordered", "gaps", "conflicting", "foreign"):
        assert verdict[kind] == 0, (kind, text)
    # the pacing loop offered about rate x duration (sent, or due but held back by a full
    # window: a loaded machine's server, not the bench), and all that was sent arrived
    assert result["sent"] + result["unsent"] >= expected * 0.9, text
    assert result["sent"] >= expected * 0.5, text
    assert result["acked"] == result["sent"]
    assert result["delivered"] == devices * result["acked"]  # on every receiving device
    assert result["echoed"] == devices * result["acked"]  # and every sending-side device
    assert verdict["acked"] == result["acked"]
    assert verdict["received"] == 2 * devices * result["acked"]
    assert result["history_pages"] == result["pairs"]  # each receiver's last page matched
    assert result["history_failed"] == 0
    assert result["server_cpu_s"] is not None  # read from the server's /metrics
    assert result["server_cpu_s"] > 0
    lat = result["latency_ms"]
    assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]


def test_small_run_over_websocket_is_clean(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "w1.json"
    rc, text, result = _bench(
        server, out, "--client", "sdk", "--pairs", "5", "--rate", "200", "--duration", "3"
    )
    _assert_clean(rc, text, result, expected=600)
    assert result["pairs"] == 5
    assert result["transport"] == "ws"
    assert result["client"] == "sdk"
    assert result["verdict"]["devices"] == 10
    # the human-readable table and the progress lines were printed too
    assert "verdict" in text and "CLEAN" in text
    assert "p99=" in text


def test_spread_over_two_processes_over_tcp_is_clean(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "w1.json"
    rc, text, result = _bench(
        server, out, "--pairs", "4", "--rate", "200", "--duration", "2",
        "--procs", "2", "--transport", "tcp",
    )  # fmt: skip
    _assert_clean(rc, text, result, expected=400)
    assert result["client"] == "lean"  # the default: raw TCP frames, no SDK
    assert result["procs"] == 2
    assert result["pairs"] == 4
    assert result["verdict"]["devices"] == 8


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "chatplane.cli", "bench", "direct",
        "--url", "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--rate", "0",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "must be positive" in done.stderr


def test_connections_cut_mid_run_lose_nothing_on_any_device(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "w1.json"
    rc, text, result = _bench(
        server, out, "--client", "sdk", "--pairs", "4", "--rate", "200", "--duration", "3",
        "--devices", "2", "--cut-every", "0.5", "--cut-fraction", "0.25",
    )  # fmt: skip
    _assert_clean(rc, text, result, expected=600, devices=2)
    assert result["verdict"]["devices"] == 16
    assert result["cuts"] >= 8  # 4 of 16 clients, about 5 times (fewer on a stalled machine)
    assert result["reconnects"] > 0  # a cut may hit a client already reconnecting


def test_a_data_dir_without_the_servers_key_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = [
        sys.executable, "-m", "chatplane.cli", "bench", "direct",
        "--url", "http://127.0.0.1:9", "--data-dir", str(elsewhere), "--duration", "1",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "give the server's --data-dir" in done.stderr
    assert not list(elsewhere.iterdir())  # and no key was made there


def test_lean_run_reads_the_servers_cpu_from_proc(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "w1.json"
    rc, text, result = _bench(server, out, "--pairs", "5", "--rate", "200", "--duration", "2",
                              "--devices", "2")
    _assert_clean(rc, text, result, expected=400, devices=2)
    assert server.proc is not None
    # the bench found the server by the port it listens on, and read /proc/PID/stat
    assert result["server_cpu_source"] == f"/proc/{server.proc.pid}/stat"
    assert result["server_cpu_us_per_msg"] > 0
    assert result["bench_cpu_us_per_msg"] > 0
    assert f"/proc/{server.proc.pid}/stat" in text


def test_a_ladder_names_its_highest_clean_rate_and_writes_plots(
    server: ServerProcess, tmp_path: Path
) -> None:
    out, plots = tmp_path / "ladder.json", tmp_path / "plots"
    rc, text, result = _bench(server, out, "--pairs", "4", "--ladder", "100,200",
                              "--duration", "1.5", "--plots", str(plots))
    assert rc == 0, text
    assert [r["offered_rate"] for r in result["rungs"]] == [100.0, 200.0]
    for rung in result["rungs"]:
        assert rung["verdict"]["ok"], text
    clean = [r["offered_rate"] for r in result["rungs"]
             if r["clean"] and r["kept_up"] and r["latency_ms"]["p99_ms"] < 50]
    assert result["highest_clean_rate"] == (max(clean) if clean else None)
    assert "highest clean rate" in text
    for name in ("w1-latency.png", "w1-ladder.png", "w1-cpu.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_the_lean_client_refuses_chaos_with_a_clear_error(tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "chatplane.cli", "bench", "direct",
        "--url", "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--cut-every", "1",
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "use --client sdk with --cut-every" in done.stderr
