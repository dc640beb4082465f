"""How one process secures its gRPC links: the server credentials and caller gate
of its gRPC port, and the channels it dials, from `settings.tls`.

With CHATPLANE_GRPC_TLS_CA/CERT/KEY set, every link is mutual TLS: the server
requires a client certificate chained to the cluster CA (or, for the Region
service, the peer CA), a client presents its own and checks the server's against
the role it dials (`grpc.ssl_target_name_override` = that role, a SAN of every
tier certificate). Without them, calls carry the per-role credential of
rpc/callers.py, keyed by CHATPLANE_LINKS_SECRET or, when empty, a key derived
from the admin secret every process of a deployment already shares.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from chatplane.auth import ADMIN_SECRET_FILE, read_or_create_secret
from chatplane.regions import peerlist
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

    @property
    def tls(self) -> bool:
        return bool(self.ca)

    @classmethod
    def from_settings(cls, settings: Settings, role: str) -> LinkSecurity:
        t = settings.tls
        peers = frozenset(p.name for p in peerlist.parse(settings.links.peers,
                                                         settings.server.region))
        if t.grpc_ca:
            ca = _read(t.grpc_ca)
            return cls(role, ca, _read(t.grpc_cert), _read(t.grpc_key),
                       _read(t.peer_ca) if t.peer_ca else ca, peers=peers)
        if peers:
            log.warning("cross-region link without gRPC TLS: peer regions are identified "
                        "by name only (set CHATPLANE_GRPC_TLS_* and CHATPLANE_PEER_TLS_CA)")
        return cls(role, secret=links_secret(settings), peers=peers)

    # -- serving ------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.tls:
            return None
        roots = self.ca if self.peer_ca == self.ca else self.ca + b"\n" + self.peer_ca
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=roots,
                                           require_client_auth=True)

    def gate(self) -> callers.CallerGate:
        check = (callers.CertCheck(self.ca, self.peer_ca)
                 if self.tls and self.peer_ca != self.ca else None)
        return callers.CallerGate(tls=self.tls, secret=self.secret, peers=self.peers,
                                  check=check)

    # -- dialing ------------------------------------------------------------------

    def for_peer_regions(self, region: str) -> LinkSecurity:
        """The dialing side of the cross-region link: trusts the peer CA, calls as
        `region.<ours>` (with TLS the certificate says so: CN or SAN)."""
        return replace(self, role=f"{callers.REGION_PREFIX}{region}", ca=self.peer_ca)

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
