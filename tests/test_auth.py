"""Tokens: minted, verified, and each kind of bad token told apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatplane.auth import TokenError, TokenSigner


def test_round_trip_and_data_dir_key_is_stable(tmp_path: Path) -> None:
    signer = TokenSigner.from_data_dir(tmp_path)
    identity = TokenSigner.from_data_dir(tmp_path).verify(signer.mint("alice", "phone"))
    assert (identity.user_id, identity.device_id) == ("alice", "phone")
    assert (tmp_path / "token.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("token", "reason"), [
    ("", "missing"), ("%%%.%%%", "malformed"), ("abc.def", "forged")])
def test_bad_tokens(token: str, reason: str) -> None:
    with pytest.raises(TokenError) as err:
        TokenSigner("k" * 32).verify(token)
    assert err.value.reason == reason


def test_expired_and_foreign_key() -> None:
    signer = TokenSigner("k" * 32)
    with pytest.raises(TokenError) as err:
        signer.verify(signer.mint("a", ttl_s=-1))
    assert err.value.reason == "expired"
    with pytest.raises(TokenError) as err:
        TokenSigner("j" * 32).verify(signer.mint("a"))
    assert err.value.reason == "forged"


def test_invalid_ids_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenSigner("k" * 32).mint("a:b")


def test_message_sent_at_is_utc() -> None:
    from datetime import UTC, datetime

    from chatplane.client import Message

    m = Message("d:a:b", 1, 1, "m1", "a", "phone", "hi", 1_790_000_000_000)
    assert m.sent_at == datetime.fromtimestamp(1_790_000_000, tz=UTC)
