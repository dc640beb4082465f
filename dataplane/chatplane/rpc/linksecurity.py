"""How one process secures its gRPC links: the server credentials and caller gate
of its gRPC port, and the channels it dials, from `settings.tls`.

With CHATPLANE_GRPC_TLS_CA/CERT/KEY set, every link is mutual TLS: the server
requires a client certificate chained to the cluster CA (or, for the Region
service, the peer CA), a client presents its own and checks the server's against
the role it dials (`grpc.ssl_target_name_override` = that role, a SAN of every
tier certificate). Renewed files are used without a restart (`CertWatch`: the
server looks per new connection, the caller per call, at most once a second).
Without them, calls carry the per-role credential of rpc/callers.py, keyed by
CHATPLANE_LINKS_SECRET or, when empty, a key derived from the admin secret every
process of a deployment already shares.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from chatplane import peerlist
from chatplane.auth import ADMIN_SECRET_FILE, read_or_create_secret
from chatplane.rpc import callers
from chatplane.settings import Settings

log = logging.getLogger("chatplane.rpc")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def links_secret(settings: Settings) -> str:
    """The key of the non-TLS per-role credential."""
    if settings.tls.links_secret:
        return settings.tls.links_secret
    admin = settings.server.admin_secret or read_or_create_secret(
        Path(settings.storage.data_dir) / ADMIN_SECRET_FILE)
    return hmac.new(admin.encode(), b"chatplane-links-secret", hashlib.sha256).hexdigest()


class _AddMetadata(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds this process's role credential to every call (the non-TLS fallback)."""

    def __init__(self, extra: Sequence[tuple[str, str]]) -> None:
        self.extra = tuple(extra)

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self.extra))
        details = grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                             details.credentials, details.wait_for_ready)
        return await continuation(details, request)


@dataclass
class LinkSecurity:
    """One process's side of the gRPC links: `role` is who it is when it calls."""

    role: str
    ca: bytes = b""  # empty: no gRPC TLS
    cert: bytes = b""
    key: bytes = b""
    peer_ca: bytes = b""
    secret: str = ""
    peers: frozenset[str] = field(default_factory=frozenset)
    # where the TLS files came from (ca, cert, key, peer ca) and their stamps, to reload them
    paths: tuple[str, ...] = ()
    stamps: tuple[tuple[int, int], ...] = ()
    dials_region: str = ""  # set: the cross-region dialing side of region `dials_region`

    @property
    def tls(self) -> bool:
        return bool(self.ca)

    @classmethod
    def from_files(cls, role: str, paths: tuple[str, ...],
                   peers: frozenset[str]) -> LinkSecurity:
        """From the PEM files (peer CA path empty: the cluster CA)."""
        stamps = _stamps(paths)
        ca_path, cert_path, key_path, peer_path = paths
        ca = _read(ca_path)
        return cls(role, ca, _read(cert_path), _read(key_path),
                   _read(peer_path) if peer_path else ca, peers=peers, paths=paths,
                   stamps=stamps)

    def reloaded(self) -> LinkSecurity | None:
        """A new LinkSecurity when the files changed and the new pair loads; None when
        nothing changed (or the files cannot be read yet: the current one stays)."""
        if not self.paths:
            return None
        try:
            if _stamps(self.paths) == self.stamps:
                return None
            ssl.create_default_context().load_cert_chain(self.paths[1], self.paths[2])
            fresh = LinkSecurity.from_files(self.role, self.paths, self.peers)
        except (OSError, ssl.SSLError) as exc:
            raise CertsUnusable(f"gRPC TLS files not reloaded: {exc}") from None
        fresh.secret = self.secret
        if self.dials_region:
            base = replace(fresh, role=self.role)
            return base.for_peer_regions(self.dials_region)
        return fresh

    @classmethod
    def from_settings(cls, settings: Settings, role: str) -> LinkSecurity:
        t = settings.tls
        peers = frozenset(p.name for p in peerlist.parse(settings.links.peers,
                                                         settings.server.region))
        if t.grpc_ca:
            return cls.from_files(role, (t.grpc_ca, t.grpc_cert, t.grpc_key, t.peer_ca), peers)
        if peers:
            log.warning("cross-region link without gRPC TLS: peer regions are identified "
                        "by name only (set CHATPLANE_GRPC_TLS_* and CHATPLANE_PEER_TLS_CA)")
        return cls(role, secret=links_secret(settings), peers=peers)

    # -- serving ------------------------------------------------------------------

    def _server_config(self) -> Any:
        roots = self.ca if self.peer_ca == self.ca else self.ca + b"\n" + self.peer_ca
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)],
                                                         root_certificates=roots)

    def server_credentials(self, gate: callers.CallerGate | None = None
                           ) -> grpc.ServerCredentials | None:
        """None without TLS. With files behind it, every new connection's handshake
        first looks (at most once a second) whether they changed: a renewed
        certificate or CA bundle is used without a restart, and `gate` learns the
        new CAs."""
        if not self.tls:
            return None
        if not self.paths:
            roots = self.ca if self.peer_ca == self.ca else self.ca + b"\n" + self.peer_ca
            return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=roots,
                                               require_client_auth=True)
        watch = CertWatch(self)

        def fetch() -> Any:  # on gRPC's own thread, per new connection
            fresh = watch.poll()
            if fresh is None:
                return None
            if gate is not None:
                gate.check = fresh.cert_check()
            return fresh._server_config()

        return grpc.dynamic_ssl_server_credentials(self._server_config(), fetch, True)

    def cert_check(self) -> callers.CertCheck | None:
        return (callers.CertCheck(self.ca, self.peer_ca)
                if self.tls and self.peer_ca != self.ca else None)

    def gate(self) -> callers.CallerGate:
        return callers.CallerGate(tls=self.tls, secret=self.secret, peers=self.peers,
                                  check=self.cert_check())

    # -- dialing ------------------------------------------------------------------

    def for_peer_regions(self, region: str) -> LinkSecurity:
        """The dialing side of the cross-region link: trusts the peer CA, calls as
        `region.<ours>` (with TLS the certificate says so: CN or SAN)."""
        return replace(self, role=f"{callers.REGION_PREFIX}{region}", ca=self.peer_ca,
                       dials_region=region)

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """What a stream call carries to prove the caller's role (the channel's
        interceptor adds it to unary calls only); nothing with TLS."""
        return () if self.tls else callers.role_metadata(self.role, self.secret)

    def open_channel(self, address: str, dials: str,
                     options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """A channel to a `dials` role (`im`, `state`, `gateway`)."""
        if self.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.ca,
                private_key=self.key, certificate_chain=self.cert)
            return grpc.aio.secure_channel(
                address, creds, options=[*options, ("grpc.ssl_target_name_override", dials)])
        role = self.role
        return grpc.aio.insecure_channel(
            address, options=list(options),
            interceptors=[_AddMetadata(callers.role_metadata(role, self.secret))])


class CertsUnusable(Exception):
    """Changed gRPC TLS files that do not load (e.g. a certificate without its key yet)."""


def _stamps(paths: Sequence[str]) -> tuple[tuple[int, int], ...]:
    return tuple((st.st_mtime_ns, st.st_size) for st in (os.stat(p) for p in paths if p))


class CertWatch:
    """The current LinkSecurity of one server or channel set, its files looked at no
    more than once a second; a change that does not load is logged once and the
    current one stays until the files change again."""

    def __init__(self, security: LinkSecurity, every_s: float = 1.0) -> None:
        self.current = security
        self.every_s = every_s
        self.reloads = 0
        self._next = time.monotonic() + every_s
        self._bad: tuple[tuple[int, int], ...] | None = None

    def poll(self) -> LinkSecurity | None:
        """The new LinkSecurity when the files changed since the last look, else None."""
        now = time.monotonic()
        if now < self._next or not self.current.paths:
            return None
        self._next = now + self.every_s
        try:
            if self._bad is not None and _stamps(self.current.paths) == self._bad:
                return None
            fresh = self.current.reloaded()
        except (CertsUnusable, OSError) as exc:
            try:
                self._bad = _stamps(self.current.paths)
            except OSError:
                pass
            log.warning("%s (the previous ones stay in use)", exc)
            return None
        if fresh is not None:
            self.current, self.reloads = fresh, self.reloads + 1
            log.info("gRPC TLS files reloaded (%s)", self.current.paths[1])
        return fresh
