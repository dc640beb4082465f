"""Settings: environment, overrides, one-line errors, and the docs table."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from chatplane.settings import Settings, SettingsError, env_name, load


def test_environment_then_overrides() -> None:
    s = load({"server": {"http_port": 9}}, environ={"CHATPLANE_HTTP_PORT": "7",
                                                   "CHATPLANE_PUSH_WINDOW": "64"})
    assert s.server.http_port == 9 and s.delivery.push_window == 64


@pytest.mark.parametrize("environ", [{"CHATPLANE_HTTP_PORT": "eighty"},
                                     {"CHATPLANE_STORAGE": "mongo"},
                                     {"CHATPLANE_DRAIN_RATE": "0"}])
def test_bad_values_fail(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load(environ=environ)


@pytest.mark.parametrize(("environ", "names"), [
    ({"CHATPLANE_ARCHIVE_S3_ENDPOINT": "s3.example.com", "CHATPLANE_ARCHIVE_S3_BUCKET": "b-1",
      "CHATPLANE_ARCHIVE_S3_ACCESS_KEY": "k", "CHATPLANE_ARCHIVE_S3_SECRET_KEY": "s"},
     "archive_s3_endpoint"),
    ({"CHATPLANE_ARCHIVE_S3_ENDPOINT": "http://127.0.0.1:8333",
      "CHATPLANE_ARCHIVE_S3_BUCKET": "Bad_Bucket", "CHATPLANE_ARCHIVE_S3_ACCESS_KEY": "k",
      "CHATPLANE_ARCHIVE_S3_SECRET_KEY": "s"}, "archive_s3_bucket"),
    ({"CHATPLANE_ARCHIVE_S3_ENDPOINT": "https://s3.example.com",
      "CHATPLANE_ARCHIVE_S3_BUCKET": "archive"}, "archive_s3_access_key"),
    ({"CHATPLANE_ARCHIVE_S3_BUCKET": "archive"}, "without archive_s3_endpoint"),
])
def test_bad_archive_object_storage_is_one_line(environ: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError) as err:
        load(environ=environ)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_bad_configuration_is_one_line_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path)],
        env={"CHATPLANE_MAX_FRAME_BYTES": "12", "PATH": "/usr/bin:/bin",
             "PYTHONPATH": os.environ.get("PYTHONPATH", "")},  # the tree under test
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "max_frame_bytes" in result.stderr and "Traceback" not in result.stderr


def test_operations_doc_lists_every_setting() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    settings = Settings()
    for section in fields(settings):
        for f in fields(getattr(settings, section.name)):
            assert f"`{env_name(section.name, f.name)}`" in doc, f"{section.name}.{f.name}"
