"""The web tests' server: one real `chatplane up` per test module (each test
uses users of its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # the web app has no invitations view yet (docs/web-client.md): groups made in the page
    # add their members at once, as `abuse.group_add_requires_consent=0` allows
    proc = ServerProcess(tmp_path_factory.mktemp("web"), tcp=False,
                         env={"CHATPLANE_GROUP_ADD_REQUIRES_CONSENT": "0"})
    proc.start()
    yield proc
    proc.stop()
