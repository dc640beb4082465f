"""certs.py on its own: a renewal half written (a new certificate beside the
old key) keeps the previous pair in service and is counted once; the completed
pair is loaded at the next look; a pair that never loads fails the start."""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path

import pytest

from chatplane import certs
from chatplane.settings import SettingsError
from tests.support import prom
from tests.support.certs import TestCa


def _replace(src: Path, dst: Path) -> None:
    shutil.copy(src, dst.with_suffix(".tmp"))
    os.replace(dst.with_suffix(".tmp"), dst)


def test_a_half_written_renewal_keeps_the_old_pair_until_it_is_complete(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    live, renewed = ca.web("live"), ca.web("renewed")
    reloading = certs.ReloadingCert(str(live.cert), str(live.key))
    first = reloading._current
    assert not reloading.check(now=1e9)  # nothing changed

    _replace(renewed.cert, live.cert)  # the certificate first: it does not match the key
    assert not reloading.check(now=2e9)
    assert not reloading.check(now=3e9)  # the same bad files are not retried (nor logged)
    assert reloading._current is first and reloading.failures == 1

    _replace(renewed.key, live.key)
    assert reloading.check(now=4e9)
    assert reloading._current is not first and reloading.reloads == 1
    figures = prom.of(reloading.families)
    assert figures["chatplane_tls_cert_reloads_total"] == 1
    assert figures["chatplane_tls_cert_reload_failures_total"] == 1


def test_checks_are_at_most_once_a_second(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    live, renewed = ca.web("live"), ca.web("renewed")
    reloading = certs.ReloadingCert(str(live.cert), str(live.key))
    _replace(renewed.cert, live.cert)
    _replace(renewed.key, live.key)
    assert not reloading.check()  # just built: the next look is a second away
    assert reloading.check(now=reloading._checked + certs.CHECK_EVERY_S)


def test_a_pair_that_does_not_load_fails_the_start(tmp_path: Path) -> None:
    ca = TestCa(tmp_path)
    live, other = ca.web("live"), ca.web("other")
    with pytest.raises(SettingsError, match="cannot load CHATPLANE_TLS_CERT/KEY"):
        certs.from_settings(str(live.cert), str(other.key))
    assert certs.from_settings("", "") is None
    context = certs.from_settings(str(live.cert), str(live.key))
    assert context is not None and context.context.minimum_version == ssl.TLSVersion.TLSv1_2
