"""`chatplane chat`: a small interactive terminal client, for trying a server by hand.

    chatplane chat --url http://127.0.0.1:8080 --token TOKEN
    chatplane chat --url http://127.0.0.1:8080 --data-dir DIR --user alice

Type `/dm bob` to open the 1:1 conversation with bob; plain lines are sent to
the current conversation; incoming messages (of every conversation, and your
own from every device) print as they arrive; `/history [N]` shows the last N
messages of the current conversation; `/help`; `/quit` (or end of input).

On a terminal it runs full screen (chatplane.client.tui: conversations, unread
markers, line editing); `--plain` or a pipe gives the line client below.

Only asyncio and the SDK: stdin is watched by the event loop when it can be
(a terminal or a pipe), else read line by line in a thread. Sends go through one
queue, so they leave in the order typed while the prompt stays responsive
(the SDK retries each until acked, across reconnects).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from chatplane.client import chat_social

HELP = """commands:
  /dm USER       open the 1:1 conversation with USER (it becomes the current one)
  /history [N]   the last N (default 20) messages of the current conversation
  /who           who you are, the current conversation, reconnects so far
{social}
  /help          this text
  /quit          leave (end of input too)
anything else is sent to the current conversation"""
HELP = HELP.replace("{social}", chat_social.HELP)


REQUEST_TIMEOUT_S = 15.0  # /dm and /history give up after this; sends never do


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "--:--:--"


class ChatSession:
    """The terminal's state: current conversation, names, what to print."""

    def __init__(self, client: Any, write: Callable[[str], None]) -> None:
        self.client = client
        self.write = write
        self.current: str | None = None
        self.peers: dict[str, str] = {}  # conversation id -> the other user
        self.outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def label(self, conversation_id: str) -> str:
        peer = self.peers.get(conversation_id)
        if peer is None:  # a 1:1 id names both users ("d:alice:bob"); else show the id
            kind, _, users = conversation_id.partition(":")
            others = [u for u in users.split(":") if u != self.client.user_id]
            peer = others[0] if kind == "d" and len(others) == 1 else conversation_id
        return peer

    def format(self, m: Any) -> str:
        me = self.client.user_id
        if m.sender != me:
            self.peers.setdefault(m.conversation_id, m.sender)
        who = "you" if m.sender == me else m.sender
        if m.sender == me and m.sender_device != self.client.device_id:
            who = f"you@{m.sender_device}"
        return f"{_clock(m.sent_at_ms)} [{self.label(m.conversation_id)} #{m.seq}] {who}: {m.text}"

    async def handle(self, line: str) -> bool:
        """Act on one input line; False means quit."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        if not line.startswith("/"):
            if self.current is None:
                self.write("no conversation yet: /dm USER first")
            else:
                self.outbox.put_nowait((self.current, line))
            return True
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        if cmd in ("/quit", "/exit", "/q"):
            return False
        if cmd == "/dm":
            await self._dm(rest)
        elif cmd == "/history":
            await self._history(rest)
        elif cmd == "/who":
            conv = self.label(self.current) if self.current else "none"
            self.write(
                f"you are {self.client.user_id}/{self.client.device_id}; "
                f"talking to {conv}; reconnects {self.client.reconnects}"
            )
        elif cmd == "/help":
            self.write(HELP)
        elif cmd in chat_social.COMMANDS:
            await chat_social.run(self, cmd, rest)
        else:
            self.write(f"unknown command {cmd}; /help lists them")
        return True

    async def _dm(self, user: str) -> None:
        if not user or " " in user:
            self.write("usage: /dm USER")
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):  # the SDK waits out outages
                conv = await self.client.direct(user)
        except TimeoutError:
            self.write(f"no answer in {REQUEST_TIMEOUT_S:.0f} s (is the server up?); try again")
            return
        except Exception as exc:
            self.write(f"cannot open a conversation with {user}: {exc}")
            return
        self.peers[conv] = user
        self.current = conv
        self.write(f"talking to {user} ({conv}); /history shows what came before")

    async def _history(self, arg: str) -> None:
        if self.current is None:
            self.write("no conversation yet: /dm USER first")
            return
        try:
            limit = int(arg) if arg else 20
        except ValueError:
            self.write("usage: /history [N]")
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                # the server refuses a page over its max_history_page (200 by default)
                msgs = await self.client.history(self.current, limit=max(1, min(limit, 200)))
        except TimeoutError:
            self.write(f"no answer in {REQUEST_TIMEOUT_S:.0f} s (is the server up?); try again")
            return
        except Exception as exc:
            self.write(f"history failed: {exc}")
            return
        if not msgs:
            self.write("(no messages yet)")
        for m in msgs:
            self.write(self.format(m))

    async def send_loop(self) -> None:
        while True:
            conv, text = await self.outbox.get()
            try:
                await self.client.send_text(conv, text)
            except Exception as exc:
                self.write(f"not sent ({exc}): {text}")
            finally:
                self.outbox.task_done()

    async def receive_loop(self) -> None:
        async for event in self.client.events():
            line = (self.format(event.message) if event.kind == "message"
                    else chat_social.describe(event, self))
            if line:
                self.write(line)


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin without blocking the loop.

    The fd is watched with `add_reader` and read only when readable, so it stays
    blocking: a terminal's stdin and stdout often share one open file, and
    making stdin non-blocking would make big writes to stdout fail. A regular
    file (which cannot be watched) is read in a thread instead.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        data = os.read(fd, 65536)
        chunks.put_nowait(data)
        if not data:
            loop.remove_reader(fd)

    try:
        loop.add_reader(fd, readable)
    except (ValueError, OSError, NotImplementedError):
        while line := await asyncio.to_thread(sys.stdin.readline):
            yield line
        return
    buf = b""
    try:
        while data := await chunks.get():
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode("utf-8", "replace")
        if buf:
            yield buf.decode("utf-8", "replace")
    finally:
        loop.remove_reader(fd)


def _printer(out: Any = sys.stdout) -> Callable[[str], None]:
    def write(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    return write


async def run_chat(url: str, token: str, transport: str, ca: str | None = None,
                   full_screen: bool = False) -> int:
    from chatplane.client import Client

    write = _printer()
    client = Client(url, token, transport=transport, ca=ca)
    try:
        async with asyncio.timeout(30):
            await client.connect()
    except Exception as exc:
        print(f"chat: cannot connect to {url}: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await client.close()
        return 1
    if full_screen:
        from chatplane.client.tui import ChatScreen

        try:
            await ChatScreen(client).run()
        finally:
            await client.close()
        return 0
    session = ChatSession(client, write)
    write(f"connected to {url} as {client.user_id}/{client.device_id}; /help for commands")
    receiving = asyncio.create_task(session.receive_loop())
    sending = asyncio.create_task(session.send_loop())
    typing = asyncio.create_task(_read_input(session))
    code = 0
    try:
        await asyncio.wait({receiving, typing}, return_when=asyncio.FIRST_COMPLETED)
        if receiving.done():  # the client ended for good: e.g. the same device logged in again
            problem = None if receiving.cancelled() else receiving.exception()
            write(f"disconnected for good: {problem or 'the message stream ended'}")
            code = 1
        else:
            # let what was typed before /quit (or end of input) leave
            async with asyncio.timeout(10):
                await session.outbox.join()
                await asyncio.sleep(0.2)  # and the echoes of the last ones print
    except TimeoutError:
        write("some messages were still unsent at exit")
    finally:
        for task in (receiving, sending, typing):
            task.cancel()
        for task in (receiving, sending, typing):
            with contextlib.suppress(BaseException):
                await task
        await client.close()
        write("bye")
    return code


async def _read_input(session: ChatSession) -> None:
    async for line in _stdin_lines():
        if not await session.handle(line):
            return


def register(subparsers: argparse._SubParsersAction) -> None:
    chat = subparsers.add_parser(
        "chat",
        help="interactive terminal client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("--url", required=True, help="the server's base URL (http://H:P)")
    chat.add_argument("--token", help="a login token (chatplane token USER)")
    chat.add_argument("--data-dir", help="mint a token with this server data dir's key ...")
    chat.add_argument("--user", help="... for this user")
    chat.add_argument("--device", default="chat", help="device id when minting (default chat)")
    chat.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    chat.add_argument("--ca", help="PEM CA file to verify an https:// server with "
                                   "(default: the system CAs)")
    chat.add_argument("--plain", action="store_true",
                      help="line by line even on a terminal (the full-screen client is the "
                           "default when stdin and stdout are terminals)")
    chat.set_defaults(func=chat_command)


def chat_command(args: argparse.Namespace) -> int:
    token = args.token
    if not token:
        if not (args.data_dir and args.user):
            print("chat: give --token, or --data-dir and --user", file=sys.stderr)
            return 2
        from pathlib import Path

        from chatplane.auth import TOKEN_KEY_FILE, TokenSigner

        if not (Path(args.data_dir) / TOKEN_KEY_FILE).is_file():
            print(
                f"chat: no {TOKEN_KEY_FILE} in {args.data_dir}: give the server's --data-dir", file=sys.stderr
            )
            return 2
        try:
            token = TokenSigner.from_data_dir(args.data_dir).mint(args.user, args.device)
        except ValueError as exc:
            print(f"chat: {exc}", file=sys.stderr)
            return 2
    try:
        full_screen = not args.plain and sys.stdin.isatty() and sys.stdout.isatty()
        return asyncio.run(run_chat(args.url, token, args.transport, args.ca, full_screen))
    except KeyboardInterrupt:
        return 130
