"""The social layer end to end on a real server: authorization, unread counts,
and every device converging through cuts."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from chatplane.auth import TokenSigner
from chatplane.checker import DeliveryChecker
from chatplane.client import Client, ErrorCode, Event, RequestError
from tests.support.proxy import ChaosProxy
from tests.support.server import ServerProcess
from tests.support.social import admin_group, befriend

pytestmark = pytest.mark.slow


async def connect(server: ServerProcess, signer: TokenSigner, user: str,
                  device: str = "phone") -> Client:
    client = Client(server.url, signer.mint(user, device))
    await client.connect()
    return client


async def refused(code: ErrorCode, call: object) -> None:
    with pytest.raises(RequestError) as err:
        await call  # type: ignore[misc]
    assert err.value.code == code, err.value


async def test_authorization(server: ServerProcess, signer: TokenSigner) -> None:
    owner, member, stranger = [await connect(server, signer, u) for u in ("olga", "mia", "sam")]
    await befriend(owner, [member])
    group = await owner.create_group("team", ["mia"])
    first = await owner.send_text(group, "hello")
    await refused(ErrorCode.FORBIDDEN, stranger.send_text(group, "let me in"))
    await refused(ErrorCode.FORBIDDEN, stranger.history(group))
    await refused(ErrorCode.FORBIDDEN, stranger.members(group))
    await refused(ErrorCode.FORBIDDEN, stranger.receipts(group, first.seq))
    await refused(ErrorCode.FORBIDDEN, stranger.mark_read(group, first.seq))
    await refused(ErrorCode.FORBIDDEN, member.kick(group, "olga"))
    await refused(ErrorCode.FORBIDDEN, member.add_members(group, ["sam"]))
    await refused(ErrorCode.FORBIDDEN, member.set_role(group, "mia", "owner"))
    await refused(ErrorCode.FORBIDDEN, member.dissolve_group(group))
    await refused(ErrorCode.FORBIDDEN, owner.leave(group))  # must hand over first
    await refused(ErrorCode.FORBIDDEN, stranger.join(group))  # no invitation
    # nobody reads another user's event conversation (its inbox) or list
    await refused(ErrorCode.FORBIDDEN, stranger.history("u:olga"))
    await refused(ErrorCode.FORBIDDEN, stranger.send_text("u:olga", "hi"))
    await refused(ErrorCode.FORBIDDEN, owner.send_text("u:olga", "forged event"))
    assert [c.conversation_id for c in await stranger.conversations()] == []
    # blocks: the blocked one can neither message nor ask
    direct = await owner.direct("sam")
    await owner.block("sam")
    await refused(ErrorCode.BLOCKED, stranger.send_text(direct, "hi"))
    await refused(ErrorCode.BLOCKED, stranger.add_friend("olga"))
    await owner.unblock("sam")
    assert (await stranger.send_text(direct, "hi again")).seq == 1
    # roles: admins kick members, not admins; ownership moves
    await owner.set_role(group, "mia", "admin")
    await befriend(owner, [stranger])
    await owner.add_members(group, ["sam"])
    await member.kick(group, "sam")
    await owner.set_role(group, "mia", "owner")
    roles = {m.user_id: m.role for m in await owner.members(group)}
    assert roles == {"mia": "owner", "olga": "admin"}
    await refused(ErrorCode.FORBIDDEN, owner.kick(group, "mia"))
    await member.dissolve_group(group)
    await refused(ErrorCode.FORBIDDEN, owner.send_text(group, "anyone?"))
    for c in (owner, member, stranger):
        await c.close()


async def test_membership_of_a_group_above_the_scan_limit(server: ServerProcess,
                                                           signer: TokenSigner) -> None:
    """A group of more than `SCAN_MEMBERS` is checked through a set of its
    members (Membership.is_member): it must follow joins and removals."""
    from chatplane.im.membership import SCAN_MEMBERS

    others = [f"crowd{i}" for i in range(SCAN_MEMBERS + 36)]
    owner, last, stranger = [await connect(server, signer, u) for u in ("oona", others[-1], "sid")]
    group = await admin_group(server.admin_url, server.data_dir, "oona", "many", others)
    assert (await last.send_text(group, "a member")).seq > 0
    await refused(ErrorCode.FORBIDDEN, stranger.send_text(group, "not one"))
    await befriend(owner, [stranger])
    await owner.add_members(group, ["sid"])
    assert (await stranger.send_text(group, "one now")).seq > 0
    await owner.kick(group, others[-1])
    await refused(ErrorCode.FORBIDDEN, last.send_text(group, "removed"))
    for c in (owner, last, stranger):
        await c.close()


def unread_of(conversations: list, conversation_id: str) -> int | None:  # type: ignore[type-arg]
    for c in conversations:
        if c.conversation_id == conversation_id:
            return int(c.unread)
    return None


async def test_unread_counts(server: ServerProcess, signer: TokenSigner) -> None:
    ann = await connect(server, signer, "ann")
    bob_phone = await connect(server, signer, "bob", "phone")
    bob_laptop = await connect(server, signer, "bob", "laptop")
    cat = await connect(server, signer, "cat")
    direct = await ann.direct("bob")
    for i in range(3):
        await ann.send_text(direct, f"m{i}")
    for device in (bob_phone, bob_laptop):
        assert unread_of(await device.conversations(), direct) == 3
    assert unread_of(await ann.conversations(), direct) == 0  # own messages never unread
    await bob_phone.mark_read(direct, 2)
    assert unread_of(await bob_laptop.conversations(), direct) == 1  # read on another device
    assert await bob_laptop.mark_read(direct, 1) == 2  # never goes back
    bob_laptop.abort_connection()
    await asyncio.sleep(0.3)
    assert unread_of(await bob_laptop.conversations(), direct) == 1  # after a reconnect
    await bob_phone.send_text(direct, "reply")
    assert unread_of(await bob_laptop.conversations(), direct) == 0  # own send reads
    assert unread_of(await ann.conversations(), direct) == 1

    await befriend(ann, [bob_phone, cat])
    group = await ann.create_group("g", ["bob", "cat"])
    await ann.send_text(group, "one")
    await ann.send_text(group, "two")
    assert unread_of(await cat.conversations(), group) == 2  # system events don't count
    await ann.kick(group, "cat")
    assert unread_of(await cat.conversations(), group) is None  # kicked: gone from the list
    await ann.send_text(group, "while cat was out")
    await ann.invite(group, ["cat"])
    await cat.join(group)
    assert unread_of(await cat.conversations(), group) == 0  # nothing from before the rejoin
    await ann.send_text(group, "welcome back")
    assert unread_of(await cat.conversations(), group) == 1
    await cat.leave(group)
    assert unread_of(await cat.conversations(), group) is None
    assert unread_of(await bob_phone.conversations(), group) == 4
    for c in (ann, bob_phone, bob_laptop, cat):
        await c.close()


class Recorder:
    """Everything a device receives through events(), fed to the checker."""

    def __init__(self, client: Client, user: str, device: str, checker: DeliveryChecker) -> None:
        self.client, self.user, self.device, self.checker = client, user, device, checker
        self.events: list[Event] = []
        checker.add_device(user, device)
        checker.add_member(f"u:{user}", user)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for event in self.client.events():
            self.events.append(event)

    def judge(self) -> None:
        """Feed the checker once memberships are known (a group's first event
        can arrive before the test learns the group's id)."""
        for event in self.events:
            m = event.message
            self.checker.record_receipt(self.user, self.device, m.conversation_id, m.seq,
                                        m.message_id)

    def stream(self) -> dict[str, list[tuple[int, str]]]:
        by_conversation: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for e in self.events:
            by_conversation[e.message.conversation_id].append((e.message.seq, e.message.message_id))
        return dict(by_conversation)


async def test_devices_converge_through_cuts(proxied_server: tuple[ServerProcess, ChaosProxy],
                                             signer: TokenSigner) -> None:
    server, proxy = proxied_server
    checker = DeliveryChecker()
    users = ["ada", "ben", "cy"]
    clients: dict[tuple[str, str], Client] = {}
    recorders = []
    for user in users:
        for device in ("phone", "laptop"):
            client = Client(server.url, signer.mint(user, device))
            await client.connect()
            clients[(user, device)] = client
            recorders.append(Recorder(client, user, device, checker))
    ada, ben, cy = (clients[(u, "phone")] for u in users)
    extras = [f"member{i}" for i in range(17)]
    group = await admin_group(server.admin_url, server.data_dir, "ada", "twenty",
                              ["ben", "cy", *extras])
    for user in users:
        checker.add_member(group, user)
    directs = [await ada.direct("ben"), await ben.direct("cy"), await cy.direct("ada")]
    for conv, pair in zip(directs, (("ada", "ben"), ("ben", "cy"), ("cy", "ada")), strict=True):
        for user in pair:
            checker.add_member(conv, user)
    rng = random.Random(5)

    async def chatter(user: str) -> None:
        me = clients[(user, rng.choice(["phone", "laptop"]))]
        for i in range(60):
            target = rng.choice([group, *[d for d in directs if user in d]])
            ack = await me.send_text(target, f"{user}-{i}")
            checker.record_ack(user, me.device_id, ack.conversation_id, ack.seq, ack.message_id)
            if i % 10 == 5:
                await me.mark_read(target, ack.seq)
            if i == 7 and user == "ada":
                await me.add_friend("ben", "hi")
                await me.add_friend("cy", "hi")
            if i % 20 == 13 and user != "ada":
                pending = await me.friend_requests()
                for request in pending["incoming"]:
                    await me.accept_friend(request.user_id)

    async def cutter() -> None:
        for _ in range(5):
            await asyncio.sleep(0.5)
            proxy.cut_all()

    await asyncio.gather(cutter(), *(chatter(u) for u in users))
    for user in ("ben", "cy"):  # requests that came after the last accept round
        me = clients[(user, "phone")]
        for request in (await me.friend_requests())["incoming"]:
            await me.accept_friend(request.user_id)
    for user in users:  # read everything at the end, on one device
        me = clients[(user, "laptop")]
        for c in await me.conversations():
            await me.mark_read(c.conversation_id, c.head_seq)

    async def settled() -> bool:
        expected: dict[str, int] = {}
        for user in users:
            for c in await clients[(user, "phone")].conversations():
                expected[c.conversation_id] = c.head_seq
        for r in recorders:
            got = r.stream()
            for conv, head in expected.items():
                if r.user in conv.replace(":", " ").split() or conv == group:
                    if len(got.get(conv, [])) < head:
                        return False
        return True

    for _ in range(200):
        if await settled():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)

    assert proxy.cuts == 5
    for r in recorders:
        r.judge()
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary() + str(verdict.to_dict()["failed_devices"])
    for user in users:
        phone = next(r for r in recorders if (r.user, r.device) == (user, "phone"))
        laptop = next(r for r in recorders if (r.user, r.device) == (user, "laptop"))
        assert phone.stream() == laptop.stream()  # same messages and events, same order
        lists = [[(c.conversation_id, c.unread, c.read_seq, c.head_seq)
                  for c in await clients[(user, d)].conversations()] for d in ("phone", "laptop")]
        assert lists[0] == lists[1] and all(unread == 0 for _, unread, _, _ in lists[0])
        receipts = [[(e.detail["reader"], e.detail["read_seq"]) for e in r.events
                     if e.kind == "receipt"] for r in (phone, laptop)]
        assert receipts[0] == receipts[1]
    assert sorted(f.user_id for f in await clients[("ada", "phone")].friends()) == ["ben", "cy"]
    for client in clients.values():
        await client.close()
