"""Keeping a ChatCluster's certificates issued and fresh, against the API (each pass).

With the operator's own CA (no `tls.issuerRef`): the CA Secret is created once and never
rewritten; every certificate Secret of `specs.certs.wanted_certs()` is read, and issued
again when it is absent, unreadable, due for renewal (a third of its lifetime left),
carries another identity, or was signed by another CA. Renewal needs no timer of its own:
every pass checks, and a pass runs at least every `--resync-seconds` (60 s), minutes
against lifetimes of days. Pods mount the Secrets; the kubelet refreshes mounted Secrets
in place and the data plane reloads changed certificate files, so a renewal restarts
nothing. With cert-manager, Certificates are applied with the region's objects
(`specs.certs.build_certificates`) and nothing happens here.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import logging
from collections.abc import Callable
from typing import Any

from chatplane_operator import api, certificates
from chatplane_operator.applying import Applier
from chatplane_operator.specs import certs

log = logging.getLogger(__name__)
Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem(secret: dict[str, Any] | None, key: str) -> bytes | None:
    value = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(value) if value else None


def ca_name(cluster: api.ChatCluster) -> str:
    return f"chatplane {cluster.namespace}/{cluster.name}"


@dataclasses.dataclass(frozen=True)
class Issuance:
    """What one pass did: the Secrets it wrote and the earliest expiry and renewal."""

    done: list[str] = dataclasses.field(default_factory=list)
    not_after: datetime.datetime | None = None
    renew_at: datetime.datetime | None = None

    def status(self) -> dict[str, str] | None:
        """`status.certificates`, or None (no certificates of the operator's own CA)."""
        if self.not_after is None or self.renew_at is None:
            return None
        return {"notAfter": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "renewAt": self.renew_at.strftime("%Y-%m-%dT%H:%M:%SZ")}


class Issuer:
    """Issues into Secrets from the cluster's CA; `clock` is injectable for the tests."""

    def __init__(self, applier: Applier, clock: Clock = utc_now) -> None:
        self.applier = applier
        self.clock = clock

    def ca(self, cluster: api.ChatCluster) -> tuple[certificates.Issued, bool]:
        """The cluster's CA, and whether this call created it (once, never rewritten)."""
        name = certs.ca_secret_name(cluster)
        secret = self.applier.get("Secret", cluster.namespace, name)
        created = False
        if secret is None:
            made = certificates.make_ca(ca_name(cluster), self.clock())
            created = self.applier.create_if_absent(certs.build_ca_secret(cluster, made))
            secret = self.applier.get("Secret", cluster.namespace, name)  # another may have won
        cert, key = _pem(secret, "tls.crt"), _pem(secret, "tls.key")
        if not cert or not key:
            raise ValueError(f"Secret {cluster.namespace}/{name} holds no CA (tls.crt, tls.key)")
        return certificates.Issued(cert, key), created

    def ensure(self, cluster: api.ChatCluster) -> Issuance:
        """Issue what is missing or due; one line per Secret written (for the Event), and
        when the first certificate expires and is renewed (for the status)."""
        if not cluster.tls.enabled or cluster.tls.issuer is not None:
            return Issuance()
        ca, created = self.ca(cluster)
        done = [f"created CA Secret {certs.ca_secret_name(cluster)}"] if created else []
        now = self.clock()
        lifetime = datetime.timedelta(hours=cluster.tls.lifetime_hours)
        held: list[bytes] = []
        for spec in certs.wanted_certs(cluster):
            secret = self.applier.get("Secret", cluster.namespace, spec.secret_name)
            pem = _pem(secret, "tls.crt")
            why = certificates.why_reissue(pem, ca, spec.wanted, now)
            if not why and _pem(secret, certs.CA_KEY) != ca.cert:
                why = "CA bundle changed"
            if not why:
                held.append(pem or b"")
                continue
            issued = certificates.issue(ca, spec.wanted, now, lifetime)
            held.append(issued.cert)
            self.applier.apply(certs.build_cert_secret(cluster, spec, issued, ca.cert))
            log.info("%s/%s: issued %s (%s)", cluster.namespace, cluster.name,
                     spec.secret_name, why)
            done.append(f"issued {spec.secret_name} ({why})")
        return Issuance(done, min(certificates.not_after(c) for c in held),
                        min(certificates.renew_at(c) for c in held))
