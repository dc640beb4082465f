"""Signed tokens: who a connection is (user, device) and until when.

A token is `base64url(json payload) "." base64url(HMAC-SHA256(key, payload))`.
The key is per deployment: a file in the data dir for `chatplane up`, a Secret
(CHATPLANE_TOKEN_SECRET) in a cluster. Verification is constant-time and says
which of missing, malformed, forged or expired a token is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from chatplane.storage.base import valid_id

TOKEN_KEY_FILE = "token.key"
# Prefix of what `peer_proof` signs: a token payload is JSON (starts with "{"), so a peer
# proof can never be replayed as a token signature.
PEER_PROOF_LABEL = b"chatplane-peer-proof-v1\x00"
ADMIN_SECRET_FILE = "admin.secret"


class TokenError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "missing" | "malformed" | "forged" | "expired"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    device_id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """A secret kept in a file (mode 0600), created on first use."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value.encode())
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return value


class TokenSigner:
    def __init__(self, key: str | bytes) -> None:
        self._key = key.encode() if isinstance(key, str) else key
        if len(self._key) < 16:
            raise ValueError("token signing key must be at least 16 bytes")

    @classmethod
    def from_data_dir(cls, data_dir: str | Path) -> TokenSigner:
        return cls(read_or_create_secret(Path(data_dir) / TOKEN_KEY_FILE))

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def peer_proof(self, challenge: bytes) -> bytes:
        """An HMAC over a peer region's challenge: equal in two regions exactly when they
        sign tokens with the same key, and says nothing else about the key."""
        return hmac.new(self._key, PEER_PROOF_LABEL + challenge, hashlib.sha256).digest()

    def mint(self, user_id: str, device_id: str = "default", ttl_s: int = 86400) -> str:
        if not valid_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
        if not valid_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
        payload = json.dumps(
            {"u": user_id, "d": device_id, "exp": int(time.time()) + ttl_s},
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def verify(self, token: str, now: float | None = None) -> Identity:
        if not token:
            raise TokenError("missing", "no token")
        try:
            body, _, signature = token.partition(".")
            payload = _unb64(body)
            given = _unb64(signature)
        except (ValueError, UnicodeError, binascii.Error) as exc:
            raise TokenError("malformed", "token is not base64url") from exc
        if not hmac.compare_digest(given, self._sign(payload)):
            raise TokenError("forged", "token signature does not match")
        try:
            claims = json.loads(payload)
            identity = Identity(str(claims["u"]), str(claims["d"]), int(claims["exp"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed", "token payload is not valid") from exc
        if identity.expires_at < (time.time() if now is None else now):
            raise TokenError("expired", "token expired")
        return identity
