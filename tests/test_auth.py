"""Tokens: minted, verified, each kind of bad token told apart, and key sets
(key ids, rotation with overlap, tokens from before key ids, the keys file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatplane.auth import DEFAULT_KID, TokenError, TokenSigner, parse_keys


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


# -- key ids and key sets ------------------------------------------------------

OLD, NEW = "o" * 24, "n" * 24


def claims(token: str) -> dict[str, object]:
    import base64
    import json

    body = token.partition(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def test_tokens_carry_kid_and_issue_time() -> None:
    signer = TokenSigner(keys=parse_keys(f"k2:{NEW},k1:{OLD}"))
    token = signer.mint("alice", "phone")
    assert claims(token)["kid"] == "k2" and isinstance(claims(token)["iat"], int)
    identity = signer.verify(token)
    assert (identity.kid, identity.user_id) == ("k2", "alice")
    assert identity.issued_at_ms > 0


def test_the_first_key_signs_and_every_key_verifies() -> None:
    before = TokenSigner(keys=parse_keys(f"k1:{OLD}"))
    during = TokenSigner(keys=parse_keys(f"k2:{NEW},k1:{OLD}"))
    after = TokenSigner(keys=parse_keys(f"k2:{NEW}"))
    old_token, new_token = before.mint("a"), during.mint("a")
    assert during.verify(old_token).kid == "k1"
    assert during.verify(new_token).kid == "k2" and after.verify(new_token).kid == "k2"
    with pytest.raises(TokenError) as err:
        after.verify(old_token)  # k1 dropped after the overlap
    assert err.value.reason == "forged"
    with pytest.raises(TokenError):
        before.verify(new_token)


def kidless_token(key: str, user: str = "a") -> str:
    """A token as minted before key ids existed: no kid, no iat."""
    import base64
    import hashlib
    import hmac
    import json
    import time

    payload = json.dumps({"u": user, "d": "default", "exp": int(time.time()) + 60},
                         separators=(",", ":")).encode()
    signature = hmac.new(key.encode(), payload, hashlib.sha256).digest()
    return ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode()
                    for part in (payload, signature))


def test_tokens_minted_before_key_ids_keep_verifying_against_k0() -> None:
    legacy = kidless_token(OLD)
    single = TokenSigner(OLD)  # today's one secret is k0
    assert single.verify(legacy).kid == DEFAULT_KID and single.verify(legacy).issued_at_ms == 0
    rotated = TokenSigner(keys=parse_keys(f"k1:{NEW},k0:{OLD}"))
    assert rotated.verify(legacy).user_id == "a"
    with pytest.raises(TokenError):
        TokenSigner(keys=parse_keys(f"k1:{NEW}")).verify(legacy)


@pytest.mark.parametrize(("text", "complaint"), [
    ("", "no token keys"), ("k1", "kid:secret"), ("k1:short", "at least 16 bytes"),
    (f"k1:{OLD},k1:{NEW}", "twice"), (f"bad kid:{OLD}", "kid:secret")])
def test_bad_key_lists_are_refused_with_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint) as err:
        parse_keys(text)
    assert OLD not in str(err.value) and NEW not in str(err.value)  # never the secret


def test_a_bad_key_list_fails_the_settings_in_one_line() -> None:
    from chatplane import settings

    with pytest.raises(settings.SettingsError, match="CHATPLANE_TOKEN_KEYS: token key 'k1'"):
        settings.load(environ={"CHATPLANE_TOKEN_KEYS": "k1:short"})


def test_the_keys_file_is_reread_when_it_changes(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from chatplane import auth

    monkeypatch.setattr(auth, "KEYS_FILE_CHECK_S", 0.0)
    path = tmp_path / "keys"
    path.write_text(f"k1:{OLD}\n")
    signer = TokenSigner(keys_file=str(path))
    old_token = signer.mint("a")
    path.write_text(f"k2:{NEW}\nk1:{OLD}\n")
    os.utime(path, (1, 1))  # a different mtime even within the clock's resolution
    new_token = signer.mint("a")
    assert claims(new_token)["kid"] == "k2" and signer.verify(old_token).kid == "k1"
    path.write_text("garbage")  # half-written: the old set stays
    os.utime(path, (2, 2))
    assert signer.verify(new_token).kid == "k2" and signer.signing_kid == "k2"
    with pytest.raises(ValueError, match="CHATPLANE_TOKEN_KEYS_FILE"):
        TokenSigner(keys_file=str(tmp_path / "missing"))
