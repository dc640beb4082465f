"""The web tests' server: one real `chatplane up` per test module (each test
uses users of its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # group add consent stays on (the default): strangers added to a group
    # get an invitation, which the page's invitations view accepts or declines
    proc = ServerProcess(tmp_path_factory.mktemp("web"), tcp=False)
    proc.start()
    yield proc
    proc.stop()
