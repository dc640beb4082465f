"""Whether the browser tests can run here: Debian's chromium, the Python
playwright package and the built web app. Browser test modules call
`skip_unless_ready()` before importing Playwright, so a machine without them
skips with the reason instead of failing to collect."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from chatplane.bench.web import CHROMIUM

APP = Path(__file__).resolve().parents[2] / "dataplane/chatplane/web/static/app.js"


def missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"Debian's chromium is not installed at {CHROMIUM} (scripts/setup/40-web.sh)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not APP.exists():
        return "the web app is not built (scripts/setup/40-web.sh)"
    return None


def skip_unless_ready() -> None:
    reason = missing()
    if reason is not None:
        pytest.skip(reason, allow_module_level=True)
