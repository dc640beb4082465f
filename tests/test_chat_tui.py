"""`chatplane chat` full screen in a real terminal (tmux), against a real
`chatplane up`: typing sends, replies appear in the open conversation, another
conversation gets an unread marker that switching (Tab) clears, and Ctrl-C
leaves. The screen is read with tmux capture-pane, as a person would see it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]


class Terminal:
    """A detached tmux session of its own (private socket), 100x24."""

    def __init__(self, command: list[str]) -> None:
        self.socket = f"chatplane-tui-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-x", "100", "-y", "24", " ".join(command))

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True,
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-l", line)
        self._tmux("send-keys", "Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    async def wait_for(self, text: str, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen:\n{screen}")
            await asyncio.sleep(0.1)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session"],
                              capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def alice_terminal(server: ServerProcess) -> Iterator[Terminal]:
    terminal = Terminal([sys.executable, "-m", "chatplane.cli", "chat", "--url", server.url,
                         "--data-dir", str(server.data_dir), "--user", "alice"])
    yield terminal
    terminal.close()


async def test_full_screen_chat(server: ServerProcess, signer: TokenSigner,
                                alice_terminal: Terminal) -> None:
    term = alice_terminal
    await term.wait_for("alice/chat | no conversation | online")
    bob = Client(server.url, signer.mint("bob", "py"))
    carol = Client(server.url, signer.mint("carol", "py"))
    await bob.connect()
    await carol.connect()
    try:
        term.type("/dm bob")
        await term.wait_for("alice/chat | bob | online")
        term.type("hello bob")
        async with asyncio.timeout(10):
            async for m in bob.messages():
                if m.text == "hello bob":
                    break
        await bob.send_text(await bob.direct("alice"), "hi alice")
        screen = await term.wait_for("bob: hi alice")
        assert screen.index("you: hello bob") < screen.index("bob: hi alice")

        await carol.send_text(await carol.direct("alice"), "carol here")
        screen = await term.wait_for("* carol (1)")
        assert "carol here" not in screen  # not the open conversation
        term.keys("Tab")
        screen = await term.wait_for("alice/chat | carol | online")
        await term.wait_for("carol: carol here")
        assert "(1)" not in term.screen()

        # alice and carol are not friends: carol's group invites alice, who joins from here
        group = await carol.create_group("team", ["alice"])
        await term.wait_for(f"/join {group}")
        term.type(f"/join {group}")
        async with asyncio.timeout(10):
            while "alice" not in [m.user_id for m in await carol.members(group)]:
                await asyncio.sleep(0.1)
        term.keys("Tab")  # back to another conversation, so the group's message is unread
        await carol.send_text(group, "standup in 5")
        screen = await term.wait_for("* team (")  # a group is listed by its name
        # the list (left column) names it, never by its id
        assert not any("g:" in line[:21] for line in screen.splitlines()), screen

        term.keys("Up")  # input history: the lines typed come back for editing, newest first
        term.keys("Up")  # (the newest is the /join)
        await term.wait_for("hello bob")
        term.keys("C-u")
        term.keys("C-c")
        for _ in range(50):
            if not term.alive():
                break
            await asyncio.sleep(0.1)
        assert not term.alive(), "Ctrl-C did not leave"
    finally:
        await bob.close()
        await carol.close()
