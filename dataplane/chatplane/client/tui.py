"""`chatplane chat` on a terminal: a full-screen client (prompt_toolkit).

Conversations on the left with unread markers, the current conversation's
messages above, an input line below with line editing and input history
(up/down). Tab / Shift-Tab (or Ctrl-N / Ctrl-P) switch conversations; PageUp
loads older messages; Ctrl-C or `/quit` leaves. Every command of the line
client works (`/dm`, `/group`, `/friends`, ...: chat.ChatSession handles
them); what they print shows as notices in the message pane.

The screen is a view of `ChatView`, which holds each conversation's messages
by seq (once each, in seq order, whatever mix of inbox and history brought
them), so it can be tested without a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style

from chatplane.client import chat_social
from chatplane.client.chat import REQUEST_TIMEOUT_S, ChatSession, _clock

PAGE = 50
STYLE = Style.from_dict({
    "sidebar": "bg:#1b2b44 #ffffff", "sidebar.current": "bg:#2f6fde #ffffff bold",
    "unread": "#f0a500 bold", "status": "bg:#dde1e6 #1b1f24", "status.offline": "bg:#f0a500 #000000",
    "me": "#2f6fde", "notice": "#6b7480 italic",
})


@dataclass
class Thread:
    """One conversation as the terminal holds it."""

    conversation_id: str
    label: str
    messages: dict[int, Any] = field(default_factory=dict)  # seq -> Message
    unread: int = 0
    older: bool = True  # history may hold more before what is loaded


class ChatView:
    """The terminal's state, independent of the screen."""

    def __init__(self, session: ChatSession) -> None:
        self.session = session
        self.threads: dict[str, Thread] = {}
        self.order: list[str] = []  # most recent activity first
        self.notices: list[str] = []

    @property
    def current(self) -> Thread | None:
        cid = self.session.current
        return self.thread(cid) if cid else None

    def thread(self, conversation_id: str) -> Thread:
        found = self.threads.get(conversation_id)
        if found is None:
            found = Thread(conversation_id, self.session.label(conversation_id))
            self.threads[conversation_id] = found
            self.order.append(conversation_id)
        return found

    def add(self, message: Any, *, live: bool) -> None:
        thread = self.thread(message.conversation_id)
        if message.seq in thread.messages:
            return
        if message.conversation_id.startswith("d:"):
            self.session.format(message)  # learns the peer's name
            thread.label = self.session.label(message.conversation_id)
        elif message.content_type == "system/group":  # a group is called by its name
            name = _as_event(message).detail.get("name")
            if name:
                thread.label = str(name)
        thread.messages[message.seq] = message
        if live:
            self.order.remove(thread.conversation_id)
            self.order.insert(0, thread.conversation_id)
            mine = message.sender == self.session.client.user_id
            if not mine and thread is not self.current:
                thread.unread += 1

    def switch(self, step: int) -> None:
        if not self.order:
            return
        cid = self.session.current
        index = self.order.index(cid) if cid in self.order else -1
        self.open(self.order[(index + step) % len(self.order)])

    def open(self, conversation_id: str) -> None:
        self.session.current = conversation_id
        self.thread(conversation_id).unread = 0

    def lines(self) -> list[tuple[str, str]]:
        """The message pane: the current conversation in seq order, then notices."""
        out: list[tuple[str, str]] = []
        thread = self.current
        me = self.session.client.user_id
        if thread is not None:
            if thread.older and thread.messages and min(thread.messages) > 1:
                out.append(("class:notice", "  (PageUp: older messages)\n"))
            for seq in sorted(thread.messages):
                m = thread.messages[seq]
                who = "you" if m.sender == me else m.sender
                text = chat_social.describe(_as_event(m), self.session) if m.content_type.startswith(
                    "system/") else m.text
                out.append(("class:me" if m.sender == me else "",
                            f"{_clock(m.sent_at_ms)} {who}: {text}\n"))
        for notice in self.notices[-6:]:
            out.append(("class:notice", notice + "\n"))
        return out

    def sidebar(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for cid in self.order:
            thread = self.threads[cid]
            style = "class:sidebar.current" if cid == self.session.current else "class:sidebar"
            marker = f" ({thread.unread})" if thread.unread else ""
            out.append((style, f" {'*' if thread.unread else ' '} {thread.label[:16]}"))
            out.append(("class:unread" if thread.unread else style, f"{marker}\n"))
        return out or [("class:sidebar", " /dm USER to start\n")]


def _as_event(message: Any) -> Any:
    from chatplane.client.social import to_event

    return to_event(message)


class ChatScreen:
    """The full-screen application around a ChatView."""

    def __init__(self, client: Any, *, input: Input | None = None,
                 output: Output | None = None) -> None:
        self.client = client
        self.session = ChatSession(client, self._notice)
        self.view = ChatView(self.session)
        self.input = Buffer(multiline=False, history=InMemoryHistory(),
                            accept_handler=self._accept)
        self.quit = asyncio.Event()
        self.app: Application[None] = Application(
            layout=self._layout(), key_bindings=self._keys(), style=STYLE, full_screen=True,
            input=input, output=output, mouse_support=False)

    def _notice(self, text: str) -> None:
        self.view.notices.extend(text.splitlines())
        if hasattr(self, "app"):  # ChatSession may write before the screen exists
            self.app.invalidate()

    def _status(self) -> list[tuple[str, str]]:
        connected = self.client._connected.is_set()
        thread = self.view.current
        where = thread.label if thread else "no conversation"
        state = "online" if connected else "reconnecting..."
        style = "class:status" if connected else "class:status.offline"
        return [(style, f" {self.client.user_id}/{self.client.device_id} | {where} | {state} "
                        "| Tab: next  PgUp: older  Ctrl-C: quit ")]

    def _layout(self) -> Layout:
        messages = Window(FormattedTextControl(self.view.lines), wrap_lines=True,
                          always_hide_cursor=True)
        self.messages_window = messages
        body = VSplit([
            Window(FormattedTextControl(self.view.sidebar), width=24, style="class:sidebar"),
            HSplit([messages,
                    Window(FormattedTextControl(self._status), height=1),
                    Window(BufferControl(self.input), height=1)]),
        ])
        return Layout(body, focused_element=self.input)

    def _keys(self) -> KeyBindings:
        keys = KeyBindings()

        @keys.add("c-c")
        @keys.add("c-d")
        def _quit(event: KeyPressEvent) -> None:
            self.quit.set()

        @keys.add("tab")
        @keys.add("c-n")
        def _next(event: KeyPressEvent) -> None:
            self._switch(1)

        @keys.add("s-tab")
        @keys.add("c-p")
        def _previous(event: KeyPressEvent) -> None:
            self._switch(-1)

        @keys.add("pageup")
        def _older(event: KeyPressEvent) -> None:
            thread = self.view.current
            if thread is not None:
                self._spawn(self._load(thread, older=True))

        return keys

    def _switch(self, step: int) -> None:
        self.view.switch(step)
        thread = self.view.current
        if thread is not None:
            self._spawn(self._load(thread, older=False))
            self._spawn(self._mark_read(thread))

    def _accept(self, buffer: Buffer) -> bool:
        line = buffer.text
        before = self.session.current
        self._spawn(self._handle(line, before))
        return False  # the buffer resets after adding the line to its history

    async def _handle(self, line: str, before: str | None) -> None:
        if not await self.session.handle(line):
            self.quit.set()
        if self.session.current and self.session.current != before:
            self.view.open(self.session.current)  # /dm or /group switched
            await self._load(self.view.thread(self.session.current), older=False)
        self.app.invalidate()

    async def _load(self, thread: Thread, *, older: bool) -> None:
        before = min(thread.messages) if older and thread.messages else None
        if older and (not thread.older or before == 1):
            thread.older = False
            return
        if not older and len(thread.messages) >= PAGE:
            return
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            page = await self.client.history(thread.conversation_id, before_seq=before, limit=PAGE)
        if older and len(page) < PAGE:
            thread.older = False
        for m in page:
            self.view.add(m, live=False)
        self.app.invalidate()

    async def _mark_read(self, thread: Thread) -> None:
        if thread.messages:
            with contextlib.suppress(Exception):
                await self.client.mark_read(thread.conversation_id, max(thread.messages))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: None if t.cancelled() or not t.exception()
                               else self._notice(f"failed: {t.exception()}"))

    async def _receive(self) -> None:
        async for event in self.client.events():
            if event.kind in ("message", "group"):
                self.view.add(event.message, live=True)
                current = self.session.current
                if current is not None and event.message.conversation_id == current:
                    self._spawn(self._mark_read(self.view.thread(current)))
            elif event.kind == "invitation":  # a group's name before its timeline is visible
                if event.detail.get("name"):
                    invited = self.view.thread(str(event.detail.get("conversation_id")))
                    invited.label = str(event.detail["name"])
                if line := chat_social.describe(event, self.session):
                    self._notice(line)
            elif event.kind == "read":  # read on another device: clear the marker
                read = self.view.threads.get(str(event.detail.get("conversation_id")))
                if read and int(event.detail.get("read_seq", 0)) >= max(read.messages, default=0):
                    read.unread = 0
            elif line := chat_social.describe(event, self.session):
                self._notice(line)
            self.app.invalidate()

    async def _load_conversations(self) -> None:
        for info in await self.client.conversations(limit=50):
            thread = self.view.thread(info.conversation_id)
            thread.label = info.name or thread.label
            thread.unread = info.unread
        self.app.invalidate()

    async def run(self) -> None:
        tasks = [asyncio.get_running_loop().create_task(c) for c in (
            self.session.send_loop(), self._receive(), self._load_conversations())]
        screen = asyncio.get_running_loop().create_task(self.app.run_async())
        try:
            await asyncio.wait({screen, asyncio.ensure_future(self.quit.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.session.outbox.join()  # what was typed leaves first
        finally:
            if not screen.done():
                self.app.exit()
            with contextlib.suppress(BaseException):
                await screen
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
