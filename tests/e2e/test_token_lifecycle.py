"""Token lifecycle against a real `chatplane up` and the real SDK: a revoked
device is closed within session_check_s while the user's other devices carry
on, a short token's session ends at its expiry, a token_provider keeps a
session past it, a key rotation (restart with a new key list, or a keys file
rewritten under a running server) drops no session, and every admin action
lands in the audit log."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from chatplane.auth import TokenSigner, parse_keys
from chatplane.client import Client
from chatplane.client.tokens import expires_at
from chatplane.protocol.errors import ErrorCode, RequestError
from tests.support.server import ServerProcess
from tests.support.traffic import ended

pytestmark = pytest.mark.slow

OLD, NEW = "old-key-" + "o" * 20, "new-key-" + "n" * 20


@pytest.fixture
def audited(data_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(data_dir, env={"CHATPLANE_AUDIT_LOG": str(data_dir / "audit.jsonl")})
    proc.start()
    yield proc
    proc.stop()



async def exchange(sender: Client, receiver: Client, conversation: str, text: str) -> None:
    ack = await sender.send_text(conversation, text)
    async for message in receiver.messages():
        if message.seq == ack.seq and message.conversation_id == conversation:
            assert message.text == text
            return


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatplane.cli", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


async def test_revoking_one_device_closes_it_and_spares_the_others(
        audited: ServerProcess, signer: TokenSigner) -> None:
    phone = Client(audited.url, signer.mint("alice", "phone"))
    laptop = Client(audited.url, signer.mint("alice", "laptop"))
    bob = Client(audited.url, signer.mint("bob", "phone"))
    for c in (phone, laptop, bob):
        await c.connect()
    chat = await bob.direct("alice")
    began = time.monotonic()
    done = await asyncio.to_thread(cli, "token", "revoke", "--url", audited.admin_url,
                                   "--user", "alice", "--device", "phone",
                                   "--data-dir", str(audited.data_dir))
    assert done.returncode == 0, done.stderr
    error = await ended(phone, 5.0)
    took = time.monotonic() - began
    assert error.code == ErrorCode.TOKEN_REVOKED and took < 5.0, (error, took)
    # the laptop carries on, both ways
    await asyncio.wait_for(exchange(bob, laptop, chat, "still here?"), 10)
    await asyncio.wait_for(exchange(laptop, bob, chat, "yes"), 10)
    # the revoked token is refused at login, not retried; a token minted now works
    again = Client(audited.url, phone.token)
    with pytest.raises(RequestError) as refused:
        await again.connect(timeout_s=10)
    assert refused.value.code == ErrorCode.TOKEN_REVOKED
    fresh = Client(audited.url, signer.mint("alice", "phone"))
    await fresh.connect()
    await asyncio.wait_for(exchange(bob, fresh, chat, "welcome back"), 10)
    for c in (laptop, bob, fresh, phone):
        await c.close()
    print(f"revoked device closed in {took * 1000:.0f} ms")


async def test_revoking_a_user_and_everything_before_a_time(
        audited: ServerProcess, signer: TokenSigner) -> None:
    auth = {"Authorization": f"Bearer {audited.admin_secret}"}
    carol = [Client(audited.url, signer.mint("carol", d)) for d in ("a", "b")]
    dave = Client(audited.url, signer.mint("dave", "a"))
    for c in (*carol, dave):
        await c.connect()
    async with aiohttp.ClientSession(audited.admin_url) as http:
        async with http.post("/v1/admin/revocations", json={"user_id": "carol"},
                             headers=auth) as r:
            assert r.status == 200
        errors = await asyncio.gather(*(ended(c, 5.0) for c in carol))
        assert {e.code for e in errors} == {ErrorCode.TOKEN_REVOKED}
        assert dave.token and not dave._closed
        for bad in ({"device_id": "a"}, {"user_id": "x y"}, {}, {"before": "yesterday"},
                    {"before": time.time() + 3600}):
            async with http.post("/v1/admin/revocations", json=bad, headers=auth) as r:
                assert r.status == 400, bad
        async with http.post("/v1/admin/revocations",
                             json={"before": time.time()}, headers=auth) as r:
            assert r.status == 200
        assert (await ended(dave, 5.0)).code == ErrorCode.TOKEN_REVOKED
        async with http.get("/v1/admin/revocations", headers=auth) as r:
            listed = {(x["user_id"], x["device_id"]) for x in (await r.json())["revocations"]}
        assert listed == {("carol", "*"), ("*", "*")}
    for c in (*carol, dave):
        await c.close()


async def test_a_short_token_session_ends_at_expiry(server: ServerProcess,
                                                    signer: TokenSigner) -> None:
    client = Client(server.url, signer.mint("erin", "phone", ttl_s=2))
    await client.connect()
    exp = expires_at(client.token)
    assert exp is not None
    error = await ended(client, 10.0)
    late = time.time() - exp
    assert error.code == ErrorCode.TOKEN_EXPIRED and late < 3.0, (error, late)
    await client.close()


async def test_a_token_provider_keeps_the_session_past_expiry(server: ServerProcess,
                                                              signer: TokenSigner) -> None:
    async def provider() -> str:
        return signer.mint("fay", "phone", ttl_s=3)

    fay = Client(server.url, token_provider=provider)
    gus = Client(server.url, signer.mint("gus", "phone"))
    await fay.connect()
    await gus.connect()
    chat = await gus.direct("fay")
    for i in range(8):  # 8 s: well past the first tokens' expiry
        await asyncio.wait_for(exchange(gus, fay, chat, f"tick {i}"), 10)
        await asyncio.sleep(1.0)
    assert fay.tokens.refreshes >= 3 and not fay._closed
    await fay.close()
    await gus.close()


def restart(proc: ServerProcess, env: dict[str, str]) -> None:
    proc.stop()
    proc.env.update(env)
    proc.start()


async def test_a_key_rotation_by_restart_drops_no_session(data_dir: Path) -> None:
    proc = ServerProcess(data_dir, env={"CHATPLANE_TOKEN_KEYS": f"k1:{OLD}"})
    proc.start()
    try:
        k1 = TokenSigner(keys=parse_keys(f"k1:{OLD}"))
        hal, ida = Client(proc.url, k1.mint("hal")), Client(proc.url, k1.mint("ida"))
        await hal.connect()
        await ida.connect()
        chat = await hal.direct("ida")
        await exchange(hal, ida, chat, "before")
        # step 1 and 2 at once here: k2 signs, k1 still verifies
        await asyncio.to_thread(restart, proc, {"CHATPLANE_TOKEN_KEYS": f"k2:{NEW},k1:{OLD}"})
        await asyncio.wait_for(exchange(hal, ida, chat, "after"), 20)  # k1 tokens logged back in
        assert hal.reconnects >= 1 and ida.reconnects >= 1
        minted = await asyncio.to_thread(
            cli, "token", "jo", env={"CHATPLANE_TOKEN_KEYS": f"k2:{NEW},k1:{OLD}"})
        jo = Client(proc.url, minted.stdout.strip())
        await jo.connect()
        assert TokenSigner(keys=parse_keys(f"k2:{NEW}")).verify(jo.token).kid == "k2"
        for c in (hal, ida, jo):
            await c.close()
    finally:
        proc.stop()


async def test_a_rewritten_keys_file_rotates_without_a_restart(data_dir: Path) -> None:
    keys = data_dir / "token-keys"
    keys.write_text(f"k1:{OLD}\n")
    proc = ServerProcess(data_dir, env={"CHATPLANE_TOKEN_KEYS_FILE": str(keys)})
    proc.start()
    auth = {"Authorization": f"Bearer {proc.admin_secret}"}
    try:
        k1 = TokenSigner(keys=parse_keys(f"k1:{OLD}"))
        kim = Client(proc.url, k1.mint("kim"))
        await kim.connect()
        keys.write_text(f"k2:{NEW}\nk1:{OLD}\n")
        os.utime(keys, (time.time() + 5, time.time() + 5))
        await asyncio.sleep(1.5)  # the server looks at the file once a second
        async with aiohttp.ClientSession(proc.admin_url) as http:
            async with http.post("/v1/admin/tokens", json={"user_id": "lee"}, headers=auth) as r:
                token = (await r.json())["token"]
        assert TokenSigner(keys=parse_keys(f"k2:{NEW}")).verify(token).kid == "k2"
        lee = Client(proc.url, token)
        await lee.connect()
        chat = await lee.direct("kim")
        await asyncio.wait_for(exchange(lee, kim, chat, "rotated"), 10)
        assert kim.reconnects == 0  # the k1 session was never touched
        for c in (kim, lee):
            await c.close()
    finally:
        proc.stop()


async def test_admin_actions_are_audited(audited: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {audited.admin_secret}"}
    async with aiohttp.ClientSession(audited.admin_url) as http:
        async with http.post("/v1/admin/users", json={"user_id": "mo"}, headers=auth) as r:
            assert r.status == 201
        async with http.post("/v1/admin/tokens", json={"user_id": "mo"}, headers=auth) as r:
            token = (await r.json())["token"]
        async with http.post("/v1/admin/tokens", json={"user_id": "mo"},
                             headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
        async with http.post("/v1/admin/revocations", json={"user_id": "mo"}, headers=auth) as r:
            assert r.status == 200
        async with http.post("/admin/drain", json={"rate": 10}) as r:
            assert r.status == 401
    drained = await asyncio.to_thread(cli, "drain", "--url", audited.admin_url, "--rate", "100",
                                      "--data-dir", str(audited.data_dir))
    assert drained.returncode == 0, drained.stderr
    text = (audited.data_dir / "audit.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    seen = [(x["action"], x["outcome"], x["who"]["credential"]) for x in lines]
    assert seen == [("user.create", "ok", "admin-secret"), ("token.mint", "ok", "admin-secret"),
                    ("token.mint", "denied", "wrong"), ("token.revoke", "ok", "admin-secret"),
                    ("gateway.drain", "denied", "none"), ("gateway.drain", "ok", "admin-secret")]
    assert lines[1]["target"] == {"user_id": "mo", "device_id": "default", "ttl_s": 86400,
                                  "kid": "k0"}
    assert all(x["who"]["addr"] == "127.0.0.1" and x["ts"].endswith("Z") for x in lines)
    assert token not in text and audited.admin_secret not in text


def test_drain_cli_needs_the_secret(server: ServerProcess) -> None:
    env = {"CHATPLANE_ADMIN_SECRET": "", "CHATPLANE_DATA_DIR": str(server.data_dir / "none")}
    refused = cli("drain", "--url", server.admin_url, env=env)
    assert refused.returncode == 1 and "401" in refused.stderr
    wrong = cli("drain", "--url", server.admin_url, "--admin-secret", "wrong", env=env)
    assert wrong.returncode == 1 and "401" in wrong.stderr
    by_env = cli("drain", "--url", server.admin_url, "--rate", "50",
                 env={"CHATPLANE_ADMIN_SECRET": server.admin_secret})
    assert by_env.returncode == 0 and json.loads(by_env.stdout.splitlines()[0])["draining"]
