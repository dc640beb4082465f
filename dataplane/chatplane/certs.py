"""The client-facing TLS certificate of a gateway (HTTPS/WSS and TCP+TLS), reloaded
without a restart when its files change.

Both listeners are given one `ssl.SSLContext` whose SNI callback runs on every
handshake: at most once a second it compares the files' mtimes and sizes with
the loaded ones and, when they changed, loads a new context that this and every
later handshake uses. Sessions already open keep the certificate they agreed on.
A pair that does not load (a cert written before its key, a typo) is logged and
the previous one stays in use until a good pair appears.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Iterator

from prometheus_client.metrics_core import Metric

from chatplane import metrics
from chatplane.settings import SettingsError

log = logging.getLogger("chatplane.tls")

CHECK_EVERY_S = 1.0


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _load(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class ReloadingCert:
    """The listeners' context (`context`) and the current pair behind it."""

    def __init__(self, cert: str, key: str) -> None:
        self.cert = cert
        self.key = key
        self.reloads = 0
        self.failures = 0
        self._stamps = (_stamp(cert), _stamp(key))
        self._bad_stamps: tuple[tuple[int, int], tuple[int, int]] | None = None
        self._checked = time.monotonic()
        # the listeners' context: the first pair, and the switch to the current one
        self.context = _load(cert, key)
        self.context.sni_callback = self._on_hello
        self._current = self.context

    def _on_hello(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                  _context: ssl.SSLContext) -> None:
        self.check()
        if self._current is not _context:
            sock.context = self._current
        return None

    def check(self, now: float | None = None) -> bool:
        """Reload when the files changed (at most once per CHECK_EVERY_S unless `now`
        is given); True when a new pair was loaded."""
        now = time.monotonic() if now is None else now
        if now - self._checked < CHECK_EVERY_S:
            return False
        self._checked = now
        try:
            stamps = (_stamp(self.cert), _stamp(self.key))
        except OSError as exc:
            self._failed(f"cannot stat the certificate files: {exc}")
            return False
        if stamps in (self._stamps, self._bad_stamps):
            return False  # unchanged, or the same files that failed to load last time
        try:
            fresh = _load(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            self._bad_stamps = stamps
            self._failed(f"cannot load {self.cert} / {self.key}: {exc}")
            return False
        self._current, self._stamps = fresh, stamps
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return True

    def _failed(self, why: str) -> None:
        self.failures += 1
        log.warning("TLS certificate not reloaded (the previous one stays): %s", why)

    def families(self) -> Iterator[Metric]:
        yield metrics.counter("chatplane_tls_cert_reloads_total",
                              "client-facing certificate reloads", self.reloads)
        yield metrics.counter("chatplane_tls_cert_reload_failures_total",
                              "reloads that failed (old cert kept)", self.failures)


def families_of(cert: ReloadingCert | None) -> metrics.Source:
    """The reload figures of a client-facing certificate; none without one."""
    return cert.families if cert is not None else tuple


def from_settings(cert: str, key: str) -> ReloadingCert | None:
    """None without a client-facing certificate (plain HTTP/WS and TCP); a pair that
    does not load stops the start with one line."""
    if not cert:
        return None
    try:
        return ReloadingCert(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"tls: cannot load CHATPLANE_TLS_CERT/KEY {cert} / {key}: {exc}") from None
