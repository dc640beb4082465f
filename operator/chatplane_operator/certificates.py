"""Issuing X.509 certificates: a CA per ChatCluster and the tiers' certificates, pure.

Every function takes the time (`now`) instead of reading a clock, so issuing and the
renewal rule are tested without waiting. Keys are ECDSA P-256; a tier certificate serves
and authenticates (server and client auth: the tiers call each other with it). The
identity the data plane checks is the subject CN (the role: `gateway`, `state`, `im`,
`ipconf`, `operator`) and the SAN DNS names (the role, the Service DNS names, and
`region.<name>` on a region's im, its cross-region identity).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
RENEW_FRACTION = 1 / 3  # renew once less than this share of the lifetime is left
BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind ours


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM."""

    cert: bytes
    key: bytes


@dataclasses.dataclass(frozen=True)
class Wanted:
    """What a certificate must say: its subject CN and SAN DNS names."""

    common_name: str
    dns_names: tuple[str, ...]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str, now: datetime.datetime) -> Issued:
    """A self-signed CA named `name` (e.g. `chatplane <namespace>/<cluster>`)."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(ca: Issued, wanted: Wanted, now: datetime.datetime,
          lifetime: datetime.timedelta) -> Issued:
    """A certificate for `wanted`, signed by `ca`, valid from `now` for `lifetime`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted.common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(
            [_san(n) for n in wanted.dns_names]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _san(name: str) -> x509.GeneralName:
    """An IP address (e.g. an advertiseURL's host) is an IP SAN: TLS clients match an IP
    only against those, never against a DNS SAN spelling it."""
    ip = _ip(name)
    return x509.IPAddress(ip) if ip is not None else x509.DNSName(name)


def split_names(names: tuple[str, ...] | list[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of a Wanted's names, in order."""
    return ([n for n in names if _ip(n) is None], [n for n in names if _ip(n) is not None])


def identity(cert_pem: bytes) -> Wanted:
    """The CN and SAN names (DNS names, then IP addresses) `cert_pem` carries."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = (*sans.value.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in sans.value.get_values_for_type(x509.IPAddress)))
    except x509.ExtensionNotFound:
        names = ()
    return Wanted(str(cns[0].value) if cns else "", names)


def not_after(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def renew_at(cert_pem: bytes) -> datetime.datetime:
    """When `cert_pem` is due for renewal: a third of its lifetime before it expires."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return end - (end - start) * RENEW_FRACTION


def why_reissue(cert_pem: bytes | None, ca: Issued, wanted: Wanted,
                now: datetime.datetime) -> str:
    """'' when `cert_pem` may stay; otherwise why it must be issued again (absent,
    unreadable, due for renewal, another identity, another CA)."""
    if not cert_pem:
        return "absent"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "unreadable"
    if now >= renew_at(cert_pem):
        return f"due for renewal (expires {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
    have = identity(cert_pem)
    if have.common_name != wanted.common_name or set(have.dns_names) != set(wanted.dns_names):
        return "identity changed"
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    if cert.issuer != ca_cert.subject:
        return "issued by another CA"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "issued by another CA"
    return ""
