"""Who may call what between the tiers: the one table of allowed callers, and the
server interceptor that refuses everyone else.

A caller's identity comes from its mutual-TLS certificate when gRPC TLS is on
(subject CN = its role; a region's cross-region identity is `region.<name>` in the
CN or a SAN DNS name), else from a per-role credential in the call metadata: the
role and HMAC-SHA256(links secret, role), which every process of one deployment
can make because they share the secret (CHATPLANE_LINKS_SECRET or the data dir's
`links.secret`). No configuration serves an anonymous caller: a call without an
identity is UNAUTHENTICATED, one from a role the table does not list for the
method is PERMISSION_DENIED.

Without TLS, a region names itself in the metadata (`region.<name>`, no proof:
peer regions share no secret); that identifies listed peers but does not
authenticate them, so a cross-region link across a network is meant to run
with mTLS (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import grpc

log = logging.getLogger("chatplane.rpc.callers")

ROLES = ("gateway", "state", "im", "ipconf", "operator")
REGION_PREFIX = "region."

# Service -> roles allowed to call any of its methods. Region.* is not here: only
# the listed peer regions may call it (`region.<name>` identities).
ALLOWED: dict[str, frozenset[str]] = {
    "chatplane.v1.Im": frozenset({"gateway", "im", "state", "operator"}),
    "chatplane.v1.Gateway": frozenset({"state", "operator"}),
    "chatplane.v1.State": frozenset({"gateway", "im"}),
}
REGION_SERVICE = "chatplane.v1.Region"

ROLE_KEY = "x-chatplane-role"
PROOF_KEY = "x-chatplane-role-proof"


def role_proof(secret: str, role: str) -> str:
    """The per-role credential of the non-TLS fallback."""
    return hmac.new(secret.encode(), f"chatplane-link-role:{role}".encode(),
                    hashlib.sha256).hexdigest()


def role_metadata(role: str, secret: str) -> tuple[tuple[str, str], ...]:
    """What a caller sends on every call without TLS. A region identity carries no proof."""
    if role.startswith(REGION_PREFIX):
        return ((ROLE_KEY, role),)
    return ((ROLE_KEY, role), (PROOF_KEY, role_proof(secret, role)))


def service_of(method: str) -> str:
    """'/chatplane.v1.Im/Handle' -> 'chatplane.v1.Im'."""
    return method.lstrip("/").partition("/")[0]


def allowed(method: str, identities: Collection[str], peers: Collection[str]) -> bool:
    """Whether a caller with these identities may call `method`; `peers` are the
    listed peer regions' names."""
    service = service_of(method)
    if service == REGION_SERVICE:
        return any(i.startswith(REGION_PREFIX) and i[len(REGION_PREFIX):] in peers
                   for i in identities)
    roles = ALLOWED.get(service)
    return roles is not None and any(i in roles for i in identities)


@dataclass(frozen=True)
class CertCheck:
    """With separate CAs for the cluster and the peer regions, which of them issued
    the caller's certificate decides which identities it may claim: a peer region's
    CA cannot mint a `gateway`. None when one CA serves both (nothing to tell apart)."""

    cluster_ca_pem: bytes
    peer_ca_pem: bytes

    def issued_by(self, cert_pem: bytes, bundle: bytes) -> bool:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature

        cert = x509.load_pem_x509_certificate(cert_pem)
        for ca in x509.load_pem_x509_certificates(bundle):
            try:
                cert.verify_directly_issued_by(ca)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
        return False


def identities_from_auth(auth: dict[str, list[bytes]], check: CertCheck | None) -> frozenset[str]:
    """The role (subject CN; every tier cert also lists its role as a SAN, so SANs do
    not make roles) and region identities (CN or SAN) an mTLS peer's certificate proves."""
    cn = {n.decode() for n in auth.get("x509_common_name", [])}
    san = {n.decode() for n in auth.get("x509_subject_alternative_name", [])}
    roles = {n for n in cn if n in ROLES}
    regions = {n for n in cn | san if n.startswith(REGION_PREFIX)}
    if check is not None:
        pem = b"".join(auth.get("x509_pem_cert", []))
        if roles and not check.issued_by(pem, check.cluster_ca_pem):
            roles = set()
        if regions and not check.issued_by(pem, check.peer_ca_pem):
            regions = set()
    return frozenset(roles | regions)


class CallerGate(grpc.aio.ServerInterceptor):
    """Refuses every call whose caller the table does not allow (before the servicer runs)."""

    def __init__(self, *, tls: bool, secret: str, peers: Collection[str],
                 check: CertCheck | None = None) -> None:
        self.tls = tls
        self.peers = frozenset(peers)
        self.check = check
        self._proofs = {role_proof(secret, r): r for r in ROLES} if secret else {}
        self._by_cert: dict[bytes, frozenset[str]] = {}  # pem -> identities (certs repeat)
        self._gated: dict[str, grpc.RpcMethodHandler] = {}
        self._logged: set[tuple[str, str]] = set()
        self.refused = 0

    def identities(self, context: grpc.aio.ServicerContext) -> frozenset[str]:
        if self.tls:
            auth = context.auth_context()
            pem = b"".join(auth.get("x509_pem_cert", []))
            known = self._by_cert.get(pem)
            if known is None:
                known = identities_from_auth(auth, self.check)
                if len(self._by_cert) > 1024:
                    self._by_cert.clear()
                self._by_cert[pem] = known
            return known
        meta = {str(k): str(v) for k, v in (context.invocation_metadata() or ())}
        role = meta.get(ROLE_KEY, "")
        if role.startswith(REGION_PREFIX):
            return frozenset({role})
        proof = meta.get(PROOF_KEY, "")
        claimed = self._proofs.get(proof)
        if claimed is not None and hmac.compare_digest(claimed, role):
            return frozenset({role})
        return frozenset()

    def _refuse(self, method: str, who: str, context: grpc.aio.ServicerContext) -> None:
        """Count it; log the first refusal of each kind (a flood must not flood the log)."""
        self.refused += 1
        kind = (method, who)
        if kind not in self._logged and len(self._logged) < 256:
            self._logged.add(kind)
            log.warning("refused %s from %s (%s)", method, context.peer(), who)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method
        gated = self._gated.get(method)
        if gated is not None:
            return gated
        handler = await continuation(details)
        if handler is None:
            return handler  # unknown method (gRPC answers UNIMPLEMENTED)
        if handler.unary_unary is not None:
            gated = self._gated[method] = self._wrap(method, handler)
        elif handler.stream_stream is not None:  # the tiers' batch streams (rpc/streams.py)
            gated = self._gated[method] = self._wrap_stream(method, handler)
        else:
            return handler  # a server stream (Region.Replicate): not gated here, as before
        return gated

    async def _check(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Abort the call unless the table allows its caller."""
        who = self.identities(context)
        if not who:
            self._refuse(method, "no identity", context)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"{method}: caller has no tier identity")
        if not allowed(method, who, self.peers):
            names = ", ".join(sorted(who))
            self._refuse(method, names, context)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{method}: not allowed for {names}")

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The method's handler behind the check (made once per method)."""
        inner = handler.unary_unary

        async def gated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._check(method, context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            gated, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _wrap_stream(self, method: str,
                     handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A stream's handler behind the check, made once per method (an async
        generator, as the tiers' stream methods are: rpc/streams.py)."""
        inner = handler.stream_stream

        async def gated(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._check(method, context)
            async with contextlib.aclosing(inner(requests, context)) as answers:
                async for answer in answers:
                    yield answer

        return grpc.stream_stream_rpc_method_handler(
            gated, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
