"""`chatplane chat` as a person would use it: two terminals talking through a real server.

Each chat is its own process fed through a pipe (the same code path as a
terminal: stdin watched by the event loop), against a real `chatplane up`.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow


class Chat:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[str] = []

    @classmethod
    async def start(cls, server: ServerProcess, user: str, *extra: str) -> Chat:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatplane.cli", "chat", "--url", server.url,
            "--data-dir", str(server.data_dir), "--user", user, *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        chat = cls(proc)
        await chat.expect(f"as {user}/")
        return chat

    async def type(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        for line in lines:
            self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, text: str, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"chat ended before {text!r}: {self.seen}")
                line = raw.decode().rstrip("\n")
                self.seen.append(line)
                if text in line:
                    return line

    async def quit(self) -> int:
        await self.type("/quit")
        await self.expect("bye")
        return await asyncio.wait_for(self.proc.wait(), 10)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_two_users_chat_and_see_history(server: ServerProcess) -> None:
    alice = await Chat.start(server, "alice")
    bob = await Chat.start(server, "bob", "--device", "phone", "--transport", "tcp")
    try:
        await alice.type("hello?")
        await alice.expect("no conversation yet")
        await alice.type("/dm bob", "hi bob")
        await alice.expect("talking to bob")
        await alice.expect("#1] you: hi bob")  # own message, echoed in seq order
        line = await bob.expect("alice: hi bob")
        assert "[alice #1]" in line
        await bob.type("/dm alice", "hey alice")
        await alice.expect("[bob #2] bob: hey alice")
        await bob.expect("#2] you: hey alice")
        await bob.type("/history 5")
        await bob.expect("[alice #1] alice: hi bob")
        await bob.expect("[alice #2] you: hey alice")
        await bob.type("/who", "/nope")
        await bob.expect("you are bob/phone; talking to alice")
        await bob.expect("unknown command /nope")
        assert await alice.quit() == 0
        assert await bob.quit() == 0
    finally:
        alice.kill()
        bob.kill()


async def test_second_device_gets_own_messages_and_end_of_input_quits(
    server: ServerProcess,
) -> None:
    laptop = await Chat.start(server, "carol", "--device", "laptop")
    phone = await Chat.start(server, "carol", "--device", "phone")
    try:
        await laptop.type("/dm dave", "from the laptop")
        await phone.expect("[dave #1] you@laptop: from the laptop")
        assert laptop.proc.stdin is not None
        laptop.proc.stdin.close()  # end of input = /quit, after what was typed is sent
        await laptop.expect("bye")
        assert await asyncio.wait_for(laptop.proc.wait(), 10) == 0
        assert await phone.quit() == 0
    finally:
        laptop.kill()
        phone.kill()


def test_chat_needs_a_token_or_a_user(server: ServerProcess) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "chat", "--url", server.url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--token" in done.stderr


async def test_a_second_login_of_the_same_device_ends_the_first(server: ServerProcess) -> None:
    first = await Chat.start(server, "gina")
    second = await Chat.start(server, "gina")  # same user, same default device
    try:
        line = await first.expect("disconnected for good")
        assert "SESSION_REPLACED" in line or "replaced" in line.lower(), line
        await first.expect("bye")
        assert await asyncio.wait_for(first.proc.wait(), 10) == 1
        await second.type("/dm hank", "still here")
        await second.expect("#1] you: still here")
        assert await second.quit() == 0
    finally:
        first.kill()
        second.kill()


async def test_friends_groups_list_and_reads_from_the_terminal(server: ServerProcess) -> None:
    ivy = await Chat.start(server, "ivy")
    jon = await Chat.start(server, "jon")
    try:
        await ivy.type("/add jon lunch?")
        await jon.expect("* friends: ivy request jon lunch?")
        await jon.type("/accept ivy")
        await jon.expect("ivy: friends")
        await ivy.type("/friends")
        await ivy.expect("friends: jon")
        await ivy.type("/group lunch jon", "noon at the usual place")
        await ivy.expect("group lunch")
        await jon.expect("* ivy created jon lunch")
        await jon.expect("ivy: noon at the usual place")
        await jon.type("/list")
        line = await jon.expect("unread 1")
        group = line.split()[0]
        await jon.type(f"/open {group}", "/read")
        await jon.expect("read up to #2")
        await ivy.expect("* jon read lunch up to #2")
        await ivy.type("/receipts 2")
        await ivy.expect("read: jon; not yet: -")
        await ivy.type("/members")
        await ivy.expect("ivy (owner), jon (member)")
        assert await ivy.quit() == 0
        assert await jon.quit() == 0
    finally:
        ivy.kill()
        jon.kill()
