"""The `tls` settings section: pairs that must come together and files that must
be readable stop the start with one line naming the variable; a certificate that
does not load stops `chatplane up` with one line too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatplane import settings as settings_mod
from chatplane.rpc import callers
from chatplane.rpc.linksecurity import LinkSecurity, links_secret
from tests.support.certs import TestCa


@pytest.mark.parametrize("env, says", [
    ({"CHATPLANE_TLS_CERT": "{cert}"}, "set both CHATPLANE_TLS_CERT and CHATPLANE_TLS_KEY"),
    ({"CHATPLANE_GRPC_TLS_CA": "{ca}", "CHATPLANE_GRPC_TLS_CERT": "{cert}"},
     "set all of CHATPLANE_GRPC_TLS_CA, _CERT and _KEY"),
    ({"CHATPLANE_PEER_TLS_CA": "{ca}"}, "CHATPLANE_PEER_TLS_CA needs the CHATPLANE_GRPC_TLS_*"),
    ({"CHATPLANE_REDIS_TLS_CERT": "{cert}"}, "CHATPLANE_REDIS_TLS_CERT and _KEY"),
    ({"CHATPLANE_TLS_CERT": "/nonexistent.pem", "CHATPLANE_TLS_KEY": "{key}"},
     "CHATPLANE_TLS_CERT='/nonexistent.pem' is not a readable file"),
])
def test_bad_tls_settings_fail_with_one_line(tmp_path: Path, env: dict[str, str],
                                             says: str) -> None:
    ca = TestCa(tmp_path)
    pair = ca.web()
    files = {"cert": str(pair.cert), "key": str(pair.key), "ca": str(ca.path)}
    environ = {k: v.format(**files) for k, v in env.items()}
    with pytest.raises(settings_mod.SettingsError) as caught:
        settings_mod.load(environ=environ)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_up_with_a_cert_that_does_not_load_says_so(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    pair = ca.web()
    other = ca.web("other")  # a key that does not match the certificate
    done = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path / "d"),
         "--port", "0", "--tls-cert", str(pair.cert), "--tls-key", str(other.key)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("chatplane: cannot start: tls: cannot load CHATPLANE_TLS_CERT/KEY")


def test_the_links_secret_comes_from_the_admin_secret_unless_set(tmp_path: Path) -> None:
    shared = settings_mod.load(environ={"CHATPLANE_ADMIN_SECRET": "admin-secret-of-the-deployment"})
    same = settings_mod.load(environ={"CHATPLANE_ADMIN_SECRET": "admin-secret-of-the-deployment",
                                      "CHATPLANE_DATA_DIR": str(tmp_path)})
    assert links_secret(shared) == links_secret(same) != "admin-secret-of-the-deployment"
    explicit = settings_mod.load(environ={"CHATPLANE_LINKS_SECRET": "xyz"})
    assert links_secret(explicit) == "xyz"
    security = LinkSecurity.from_settings(shared, "gateway")
    assert not security.tls and security.secret == links_secret(shared)
    assert dict(callers.role_metadata("gateway", security.secret))[callers.PROOF_KEY] == \
        callers.role_proof(links_secret(shared), "gateway")
