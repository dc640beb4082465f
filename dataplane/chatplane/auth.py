"""Signed tokens: who a connection is (user, device), since and until when,
and the key set that signs and verifies them.

A token is `base64url(json payload) "." base64url(HMAC-SHA256(key, payload))`;
the payload is `{"u", "d", "exp", "iat", "kid"}` (`iat` in milliseconds, what
revocations compare with). The keys are per deployment: a set of (kid, key)
from CHATPLANE_TOKEN_KEYS or CHATPLANE_TOKEN_KEYS_FILE ("kid1:secret1,kid2:
secret2": the first signs, all verify; the file is re-read when it changes, so
a rotation needs no restart), else one key (CHATPLANE_TOKEN_SECRET, or a file
in the data dir for `chatplane up`) known as kid "k0". A token without a kid
(minted before key ids) verifies against "k0". Verification is constant-time
and says which of missing, malformed, forged or expired a token is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chatplane.protocol.records import valid_id

if TYPE_CHECKING:
    from chatplane.settings import Settings

log = logging.getLogger("chatplane.auth")

TOKEN_KEY_FILE = "token.key"
# Prefix of what `peer_proof` signs: a token payload is JSON (starts with "{"), so a peer
# proof can never be replayed as a token signature.
PEER_PROOF_LABEL = b"chatplane-peer-proof-v1\x00"
ADMIN_SECRET_FILE = "admin.secret"
DEFAULT_KID = "k0"  # the single key of a deployment without a key set, and of kid-less tokens
KEYS_FILE_CHECK_S = 1.0  # how often the keys file's mtime is looked at


class TokenError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "missing" | "malformed" | "forged" | "expired"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    device_id: str
    expires_at: int  # seconds since the epoch
    issued_at_ms: int = 0  # 0: a token minted before `iat` existed
    kid: str = DEFAULT_KID


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


def parse_keys(text: str) -> dict[str, bytes]:
    """"kid1:secret1,kid2:secret2" (commas or newlines) -> {kid: key}, in order:
    the first signs. Raises ValueError naming what is wrong (never the secret)."""
    keys: dict[str, bytes] = {}
    for n, item in enumerate(text.replace("\n", ",").split(","), 1):
        item = item.strip()
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not valid_id(kid):
            raise ValueError(f"token key #{n}: expected kid:secret with kid 1-64 of A-Z a-z 0-9 _ . @ -")
        if len(secret.encode()) < 16:
            raise ValueError(f"token key {kid!r}: the secret must be at least 16 bytes")
        if kid in keys:
            raise ValueError(f"token key {kid!r} listed twice")
        keys[kid] = secret.encode()
    if not keys:
        raise ValueError("no token keys listed")
    return keys


class TokenSigner:
    """Mints with the first key of its set; verifies with any of them."""

    def __init__(self, key: str | bytes | None = None, *,
                 keys: dict[str, bytes] | None = None, keys_file: str = "") -> None:
        self._keys: dict[str, bytes] = {}
        self._signing = DEFAULT_KID
        self._keys_file = Path(keys_file) if keys_file else None
        self._file_stamp: tuple[float, int] | None = None
        self._file_checked = 0.0
        if self._keys_file is not None:
            self._load_file(strict=True)
        elif keys:
            self._set(keys)
        else:
            if key is None:
                raise ValueError("a token key is required")
            raw = key.encode() if isinstance(key, str) else key
            if len(raw) < 16:
                raise ValueError("token signing key must be at least 16 bytes")
            self._set({DEFAULT_KID: raw})

    @classmethod
    def from_data_dir(cls, data_dir: str | Path) -> TokenSigner:
        return cls(read_or_create_secret(Path(data_dir) / TOKEN_KEY_FILE))

    @classmethod
    def configured(cls, settings: Settings) -> TokenSigner:
        """The key set the settings name: CHATPLANE_TOKEN_KEYS_FILE, else
        CHATPLANE_TOKEN_KEYS, else the single secret or data-dir key file (k0)."""
        tokens, server = settings.tokens, settings.server
        if tokens.keys_file:
            return cls(keys_file=tokens.keys_file)
        if tokens.keys:
            return cls(keys=parse_keys(tokens.keys))
        if server.token_secret:
            return cls(server.token_secret)
        return cls.from_data_dir(settings.storage.data_dir)

    def _set(self, keys: dict[str, bytes]) -> None:
        self._keys = dict(keys)
        self._signing = next(iter(keys))

    def _load_file(self, strict: bool) -> None:
        assert self._keys_file is not None
        try:
            stat = self._keys_file.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._file_stamp:
                return
            keys = parse_keys(self._keys_file.read_text())
        except (OSError, ValueError) as exc:
            if strict:
                raise ValueError(f"CHATPLANE_TOKEN_KEYS_FILE {self._keys_file}: {exc}") from exc
            # a half-written or broken file must not log everybody out: keep the old set
            log.warning("token keys file %s not reloaded: %s", self._keys_file, exc)
            return
        if self._file_stamp is not None:
            log.warning("token keys reloaded from %s: signing kid %s, verifying %s",
                        self._keys_file, next(iter(keys)), ",".join(keys))
        self._file_stamp = stamp
        self._set(keys)

    def _refresh(self) -> None:
        """Re-read the keys file when it changed (looked at once a second)."""
        if self._keys_file is None:
            return
        now = time.monotonic()
        if now - self._file_checked >= KEYS_FILE_CHECK_S:
            self._file_checked = now
            self._load_file(strict=False)

    @property
    def kids(self) -> list[str]:
        self._refresh()
        return list(self._keys)

    @property
    def signing_kid(self) -> str:
        self._refresh()
        return self._signing

    def peer_proof(self, challenge: bytes) -> bytes:
        """An HMAC over a peer region's challenge with the signing key: equal in
        two regions exactly when they sign tokens with the same key, and says
        nothing else about the key."""
        self._refresh()
        key = self._keys[self._signing]
        return hmac.new(key, PEER_PROOF_LABEL + challenge, hashlib.sha256).digest()

    def mint(self, user_id: str, device_id: str = "default", ttl_s: int = 86400) -> str:
        if not valid_id(user_id):
            raise ValueError(f"invalid user id {user_id!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
        if not valid_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}: 1-64 of A-Z a-z 0-9 _ . @ -")
        self._refresh()
        now = time.time()
        payload = json.dumps(
            {"u": user_id, "d": device_id, "exp": int(now) + ttl_s, "iat": int(now * 1000),
             "kid": self._signing},
            separators=(",", ":"),
        ).encode()
        signature = hmac.new(self._keys[self._signing], payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(signature)}"

    def verify(self, token: str, now: float | None = None) -> Identity:
        if not token:
            raise TokenError("missing", "no token")
        try:
            body, _, signature = token.partition(".")
            payload = _unb64(body)
            given = _unb64(signature)
        except (ValueError, UnicodeError, binascii.Error) as exc:
            raise TokenError("malformed", "token is not base64url") from exc
        self._refresh()
        try:
            claims = json.loads(payload)
        except (ValueError, UnicodeError):
            claims = None
        kid = claims.get("kid", DEFAULT_KID) if isinstance(claims, dict) else DEFAULT_KID
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("forged", "token signed with a key this server does not hold")
        if not hmac.compare_digest(given, hmac.new(key, payload, hashlib.sha256).digest()):
            raise TokenError("forged", "token signature does not match")
        if not isinstance(claims, dict):
            raise TokenError("malformed", "token payload is not valid")
        try:
            identity = Identity(str(claims["u"]), str(claims["d"]), int(claims["exp"]),
                                int(claims.get("iat", 0)), kid)
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed", "token payload is not valid") from exc
        if identity.expires_at < (time.time() if now is None else now):
            raise TokenError("expired", "token expired")
        return identity
