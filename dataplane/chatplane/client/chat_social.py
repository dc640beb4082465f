"""The social commands of `chatplane chat`: friends, groups, the conversation
list, read state and receipts. Each is one SDK call; errors print one line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from chatplane.client.chat import ChatSession

T = TypeVar("T")

HELP = """  /friends       friends, pending requests both ways, blocked users
  /add USER [NOTE]  ask USER for friendship    /accept USER  /decline USER
  /unfriend USER  /block USER  /unblock USER
  /group NAME USER...   create a group with you as owner (it becomes current)
  /open CONV     make a conversation id current (see /list)
  /list          your conversations, most recent first, with unread counts
  /read          mark the current conversation read (on all your devices)
  /receipts SEQ  who read message SEQ of the current conversation, who did not
  /members  /invite USER...  /join CONV  /leave  /kick USER  /role USER ROLE
  /rename NAME  /dissolve"""

COMMANDS = {"/friends", "/add", "/accept", "/decline", "/unfriend", "/block", "/unblock",
            "/group", "/open", "/list", "/read", "/receipts", "/members", "/invite", "/join",
            "/leave", "/kick", "/role", "/rename", "/dissolve"}


async def _call(session: ChatSession, what: str, call: Awaitable[T]) -> T | None:
    from chatplane.client.chat import REQUEST_TIMEOUT_S

    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            return await call
    except TimeoutError:
        session.write(f"{what}: no answer in {REQUEST_TIMEOUT_S:.0f} s; try again")
    except Exception as exc:
        session.write(f"{what} failed: {exc}")
    return None


def _relations(label: str, rows: list[Any]) -> str:
    return f"{label}: " + (", ".join(r.user_id + (f" ({r.note})" if r.note else "")
                                     for r in rows) or "-")


async def run(session: ChatSession, cmd: str, rest: str) -> None:
    client = session.client
    args = rest.split()
    current = session.current
    if cmd == "/friends":
        friends = await _call(session, "friends", client.friends())
        pending = await _call(session, "requests", client.friend_requests())
        blocked = await _call(session, "blocked", client.blocked())
        if friends is not None and pending is not None:
            session.write(_relations("friends", friends))
            session.write(_relations("asking you", pending["incoming"]))
            session.write(_relations("you asked", pending["outgoing"]))
            session.write("blocked: " + (", ".join(blocked or []) or "-"))
    elif cmd in ("/add", "/accept", "/decline", "/unfriend", "/block", "/unblock"):
        if not args:
            session.write(f"usage: {cmd} USER")
            return
        call = {"/add": lambda u: client.add_friend(u, " ".join(args[1:])),
                "/accept": client.accept_friend, "/decline": client.decline_friend,
                "/unfriend": client.remove_friend, "/block": client.block,
                "/unblock": client.unblock}[cmd]
        relation = await _call(session, cmd[1:], call(args[0]))
        if relation is not None:
            state = ("friends" if relation.friend else "request sent" if relation.request_sent
                     else "blocked" if relation.blocked else "no relation")
            session.write(f"{args[0]}: {state}")
    elif cmd == "/group":
        if not args:
            session.write("usage: /group NAME USER...")
            return
        group = await _call(session, "group", client.create_group(args[0], args[1:]))
        if group:
            session.peers[group] = args[0]
            session.current = group
            session.write(f"group {args[0]} ({group}) created; you are its owner")
    elif cmd == "/open":
        if not args:
            session.write("usage: /open CONVERSATION_ID")
            return
        session.current = args[0]
        session.write(f"current conversation: {session.label(args[0])}")
    elif cmd == "/list":
        rows = await _call(session, "list", client.conversations(limit=50))
        for c in rows or []:
            session.peers.setdefault(c.conversation_id, c.name)
            last = c.last_message.text[:40] if c.last_message else ""
            session.write(f"{c.conversation_id}  {c.name or '-'}  unread {c.unread}  {last}")
        if rows == []:
            session.write("(no conversations yet)")
    elif current is None:
        session.write("no conversation yet: /dm USER, /group or /open first")
    elif cmd == "/read":
        rows = await _call(session, "read", client.history(current, limit=1))
        if rows:
            seq = await _call(session, "read", client.mark_read(current, rows[-1].seq))
            session.write(f"read up to #{seq}")
    elif cmd == "/receipts":
        if not args or not args[0].isdigit():
            session.write("usage: /receipts SEQ")
            return
        receipts = await _call(session, "receipts", client.receipts(current, int(args[0])))
        if receipts is not None:
            session.write(f"read: {', '.join(receipts.read) or '-'}; "
                          f"not yet: {', '.join(receipts.unread) or '-'}")
    elif cmd == "/members":
        members = await _call(session, "members", client.members(current))
        if members is not None:
            session.write(", ".join(f"{m.user_id} ({m.role})" for m in members))
    elif cmd == "/join":
        target = args[0] if args else current
        if await _call(session, "join", client.join(target)) is not None:
            session.current = target
            session.write(f"joined {target}")
    else:
        calls = {"/invite": lambda: client.invite(current, args),
                 "/leave": lambda: client.leave(current),
                 "/kick": lambda: client.kick(current, args[0]),
                 "/role": lambda: client.set_role(current, args[0], args[1]),
                 "/rename": lambda: client.rename_group(current, " ".join(args)),
                 "/dissolve": lambda: client.dissolve_group(current)}
        needs = {"/kick": 1, "/role": 2, "/rename": 1, "/invite": 1}
        if len(args) < needs.get(cmd, 0):
            session.write(f"usage: see /help ({cmd})")
            return
        if await _call(session, cmd[1:], calls[cmd]()) is not None or cmd == "/invite":
            session.write(f"{cmd[1:]}: done")


def describe(event: Any, session: ChatSession) -> str | None:
    """A line for a non-message event (None: nothing worth printing)."""
    d = event.detail
    where = session.label(event.message.conversation_id)
    if event.kind == "group":
        who = ", ".join(d.get("user_ids", []))
        extra = d.get("name") or d.get("role") or ""
        action = d.get("action", "").lower()
        return f"[{where} #{event.message.seq}] * {d.get('actor')} {action} {who} {extra}".rstrip()
    if event.kind == "friend":
        action = d.get("action", "").lower()
        return f"* friends: {d.get('actor')} {action} {d.get('user_id')} {d.get('note', '')}".rstrip()
    if event.kind == "read":
        return f"* read {session.label(d.get('conversation_id', ''))} up to #{d.get('read_seq')}"
    if event.kind == "receipt":
        return (f"* {d.get('reader')} read {session.label(d.get('conversation_id', ''))}"
                f" up to #{d.get('read_seq')}")
    if event.kind == "invitation":
        conversation = d.get("conversation_id")
        return (f"* {d.get('inviter')} invites you to {d.get('name') or conversation}:"
                f" /join {conversation}")
    return None
