"""The SDK's token: the one it logs in with, when to fetch a fresh one, and
from where (`Client(url, token_provider=...)`, docs/client.md).

A fresh token is presented at the next login: shortly before the current
token expires the client fetches one from the app's provider and logs in again
on a new connection (a reconnect without loss: the cursor and the pending sends
carry over), so the server never has to close the session at the old expiry.
A login refused with TOKEN_EXPIRED or AUTH_FAILED fetches a fresh token once
before giving up; TOKEN_REVOKED is never retried: the app must sign the user in
again.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable

from chatplane.protocol.errors import ErrorCode

log = logging.getLogger("chatplane.client")

TokenProvider = Callable[[], Awaitable[str]]

# Fetch a fresh token this long before expiry: a fifth of the token's life,
# at least half a second, at most a minute.
REFRESH_SHARE = 0.2
REFRESH_MIN_S = 0.5
REFRESH_MAX_S = 60.0

# Login refusals a fresh token may cure (once).
CURABLE = {ErrorCode.TOKEN_EXPIRED, ErrorCode.AUTH_FAILED}


def expires_at(token: str) -> float | None:
    """The token's `exp` (epoch seconds), read without verifying; None when
    the token does not say (the server is the judge anyway)."""
    try:
        body = token.partition(".")[0]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


class TokenSource:
    def __init__(self, token: str, provider: TokenProvider | None) -> None:
        if not token and provider is None:
            raise ValueError("a token or a token_provider is required")
        self.token = token
        self.provider = provider
        self.refreshes = 0  # tokens fetched from the provider
        self._given_at = time.time()

    async def current(self) -> str:
        """The token to log in with (fetched first when there is none yet)."""
        if not self.token:
            await self.refresh()
        return self.token

    async def refresh(self) -> None:
        """Fetch a fresh token from the provider (its exceptions propagate)."""
        if self.provider is None:
            return
        token = await self.provider()
        if not isinstance(token, str) or not token:
            raise ValueError("token_provider returned no token")
        self.token = token
        self._given_at = time.time()
        self.refreshes += 1

    def refresh_at(self) -> float | None:
        """When to fetch the next token (epoch seconds); None: never (no
        provider, or a token that does not say when it expires)."""
        if self.provider is None:
            return None
        exp = expires_at(self.token)
        if exp is None:
            return None
        life = max(0.0, exp - self._given_at)
        margin = min(REFRESH_MAX_S, max(REFRESH_MIN_S, REFRESH_SHARE * life))
        return max(exp - margin, self._given_at + 1.0)  # a provider of tiny tokens: no spin

    def can_cure(self, code: int) -> bool:
        return self.provider is not None and code in CURABLE
