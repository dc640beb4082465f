"""Revocations as a process holds them (chatplane/revocations.py): which
tokens a cutoff refuses, merging copies, the `before` forms the admin API
takes; and when the SDK fetches a fresh token (client/tokens.py)."""

from __future__ import annotations

import time

import pytest

from chatplane.auth import Identity
from chatplane.client.tokens import TokenSource, expires_at
from chatplane.revocations import RevocationList, parse_before
from chatplane.storage.base import ANY, Revocation

T = 1_790_000_000_000


def identity(user: str, device: str, issued_ms: int) -> Identity:
    return Identity(user, device, expires_at=2_000_000_000, issued_at_ms=issued_ms)


def test_a_device_a_user_and_everyone() -> None:
    revoked = RevocationList()
    assert revoked.merge([Revocation("alice", "phone", T)]) == [Revocation("alice", "phone", T)]
    assert revoked.revoked(identity("alice", "phone", T - 1))
    assert not revoked.revoked(identity("alice", "phone", T))  # minted after: good
    assert not revoked.revoked(identity("alice", "laptop", T - 1))  # her other device
    revoked.merge([Revocation("bob", ANY, T)])
    assert revoked.revoked(identity("bob", "laptop", T - 1))
    assert not revoked.revoked(identity("carol", "x", T - 1))
    revoked.merge([Revocation(ANY, ANY, T - 100)])
    assert revoked.revoked(identity("carol", "x", T - 101))
    assert not revoked.revoked(identity("carol", "x", T - 100))
    # a token minted before iat existed counts as issued at 0
    assert revoked.revoked(identity("carol", "x", 0))


def test_merging_only_raises_cutoffs() -> None:
    revoked = RevocationList()
    revoked.merge([Revocation("alice", "phone", T)])
    assert revoked.merge([Revocation("alice", "phone", T - 5)]) == []  # a stale copy
    assert revoked.cutoff("alice", "phone") == T
    assert revoked.merge([Revocation("alice", "phone", T + 5)]) == [Revocation("alice", "phone", T + 5)]
    assert len(revoked) == 1


@pytest.mark.parametrize(("given", "ms"), [
    (1_790_000_000, T), ("1790000000", T), ("1790000000.5", T + 500),
    ("2026-09-21T14:13:20Z", T), ("2026-09-21T16:13:20+02:00", T)])
def test_before_takes_epoch_seconds_and_iso_times(given: str | int, ms: int) -> None:
    assert parse_before(given) == ms


@pytest.mark.parametrize("given", ["yesterday", "2026-09-21T13:33:20", "nan", "inf", "-1", True,
                                   10**12])
def test_bad_befores_are_refused(given: str | int) -> None:
    with pytest.raises(ValueError, match="before"):
        parse_before(given)


def test_the_sdk_refreshes_a_fifth_of_the_life_before_expiry() -> None:
    async def provider() -> str:
        return "x"

    def token(exp: float) -> str:
        import base64
        import json

        body = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
        return f"{body}.sig"

    now = time.time()
    assert expires_at(token(now + 100)) == pytest.approx(now + 100)
    assert expires_at("not a token") is None
    assert TokenSource(token(now + 100), None).refresh_at() is None  # no provider: never
    day = TokenSource(token(now + 86400), provider).refresh_at()
    assert day is not None and day == pytest.approx(now + 86400 - 60, abs=1)
    short = TokenSource(token(now + 10), provider).refresh_at()
    assert short is not None and short == pytest.approx(now + 8, abs=0.2)
    with pytest.raises(ValueError):
        TokenSource("", None)
