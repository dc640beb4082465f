"""`chatplane bench hotcache` and `chatplane bench archive` through the CLI, as a
person runs them (docs/benchmarks.md, "Storage tiers"): small runs print the
figures the page records, the archive bench also with its segments in a real
S3-compatible server, and bad input is refused in one line.
(`bench invalidation` runs against real im processes in
tests/cluster/test_invalidation_processes.py; here only what it refuses.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatplane.cli", "bench", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_hotcache_prints_each_policy_on_the_same_requests() -> None:
    done = _bench("hotcache", "--conversations", "5000", "--cache", "100",
                  "--requests", "50000", "--scan-every", "5000", "--scan-length", "200")
    assert done.returncode == 0, done.stderr
    rows = {row["policy"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert set(rows) == {"lru", "hotring", "wtinylfu"}
    for row in rows.values():
        # a scan of 200 before every 5,000th request but the first
        assert row["capacity"] == 100 and row["requests"] == 50000 + 9 * 200
        assert 0 < row["zipf_hit_rate"] < 1 and row["evictions"] > 0
    assert rows["wtinylfu"]["zipf_hit_rate"] > rows["lru"]["zipf_hit_rate"]


@pytest.mark.parametrize("args", [("--cache", "0"), ("--zipf", "0"), ("--policies", "lru,fifo")])
def test_hotcache_refuses_what_it_cannot_use_in_one_line(args: tuple[str, ...]) -> None:
    done = _bench("hotcache", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("chatplane bench hotcache: need") and done.stderr.count("\n") == 1


def _check_archive(result: dict[str, Any], conversations: int, messages: int) -> None:
    # all but each conversation's newest message go to segments
    assert result["messages_archived"] == conversations * (messages - 1)
    assert result["segments"] >= conversations
    assert result["segment_bytes"] < result["record_bytes"]  # zstd did something
    assert result["compression_ratio"] > 1
    assert 0 < result["segment_bytes_per_message"] < result["hot_bytes_per_message"]
    for page in ("page_ms_hot", "page_ms_archive_cold", "page_ms_archive_warm"):
        assert result[page] > 0


@pytest.mark.slow
def test_archive_prints_its_figures_on_a_directory() -> None:
    done = _bench("archive", "--conversations", "3", "--messages", "300", "--reads", "10")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["segments_in"] == "dir"
    _check_archive(result, 3, 300)


@pytest.mark.slow
@pytest.mark.s3
def test_archive_on_s3_writes_its_segments_to_the_bucket_and_removes_them(s3_server: Any) -> None:
    import asyncio

    env = {"CHATPLANE_ARCHIVE_S3_ENDPOINT": s3_server.endpoint,
           "CHATPLANE_ARCHIVE_S3_BUCKET": s3_server.bucket,
           "CHATPLANE_ARCHIVE_S3_PREFIX": "bench-test/",
           "CHATPLANE_ARCHIVE_S3_ACCESS_KEY": s3_server.access_key,
           "CHATPLANE_ARCHIVE_S3_SECRET_KEY": s3_server.secret_key}
    done = _bench("archive", "--s3", "--conversations", "2", "--messages", "200",
                  "--reads", "5", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["segments_in"] == "s3"
    _check_archive(result, 2, 200)

    async def left() -> list[str]:
        store = s3_server.segments(prefix="bench-test/")
        try:
            return list(await store.names(""))
        finally:
            await store.close()

    assert asyncio.run(left()) == []  # a bucket is not a temporary directory


def test_archive_on_s3_without_an_endpoint_is_refused_in_one_line() -> None:
    done = _bench("archive", "--s3", env={"CHATPLANE_ARCHIVE_S3_ENDPOINT": ""})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("chatplane bench archive: --s3 needs")
    assert done.stderr.count("\n") == 1


def test_invalidation_refuses_a_data_dir_without_the_deployments_key(tmp_path: Any) -> None:
    done = _bench("invalidation", "--im", "127.0.0.1:1", "--im", "127.0.0.1:2",
                  "--data-dir", str(tmp_path), env={"CHATPLANE_ADMIN_SECRET": ""})
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("chatplane bench invalidation: no admin.secret in")
    assert list(tmp_path.iterdir()) == []  # it made up no key


def test_invalidation_needs_two_instances_and_says_so_when_one_is_down(tmp_path: Any) -> None:
    done = _bench("invalidation", "--im", "127.0.0.1:1", "--data-dir", str(tmp_path))
    assert done.returncode == 2 and "need two or more --im" in done.stderr
    env = {"CHATPLANE_ADMIN_SECRET": "s" * 32}
    done = _bench("invalidation", "--im", "127.0.0.1:1", "--im", "127.0.0.1:2",
                  "--data-dir", str(tmp_path), env=env)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("chatplane bench invalidation: ")
