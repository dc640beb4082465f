"""Friends, blocks and read positions across two real `chatplane up` regions on
loopback (each its own SQLite store, a failover witness, the region link through a
proxy that each test cuts and heals in the middle of its operations), driven through
the SDK: a pair's changes are decided by the home of its first user and replicated
through that home's log, and read positions by the reader's events, so both stores
and every device in both regions see the same friends, blocks and read positions,
and the rules that read them (a 1:1 send's block check, a group ADD's consent rule)
decide alike in both regions (docs/architecture.md, "Friends and reads across
regions").

alice logs in first in eu and bob, carol and dave first in us: those are their homes.
So the pair (alice, bob) is decided in eu and the pair (carol, dave) in us."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from chatplane.auth import TokenSigner
from chatplane.client import Client
from chatplane.protocol.errors import ErrorCode, RequestError
from tests.support.regions import (
    SHARED_KEY,
    Cuts,
    RegionProcess,
    WitnessProcess,
    caught_up,
    sees,
    wait_for,
    witnessed_regions,
)
from tests.support.traffic import next_event

pytestmark = pytest.mark.slow

Regions = tuple[RegionProcess, RegionProcess, WitnessProcess, Cuts]
mint = TokenSigner(SHARED_KEY).mint
T = TypeVar("T")


@pytest.fixture
async def regions(tmp_path: Path) -> AsyncIterator[Regions]:
    async with witnessed_regions(tmp_path) as linked:  # the consent rule on (the default)
        eu, us, _, _ = linked
        for me, other in ((eu, us), (us, eu)):
            await asyncio.to_thread(wait_for, lambda m=me, o=other: sees(m, o.name), 20,
                                    f"{me.name} sees {other.name}")
        yield linked


def _metric(region: RegionProcess, name: str) -> float:
    status, text = region.get("/metrics")
    assert status == 200
    line = next((x for x in text.splitlines() if x.startswith(f"{name} ")), None)
    return 0.0 if line is None else float(line.rsplit(" ", 1)[1])


def _read_store(region: RegionProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{region.data_dir / 'chatplane.db'}?mode=ro", uri=True)
    try:
        return [tuple(row) for row in db.execute(sql, args)]
    finally:
        db.close()


def _relations(region: RegionProcess) -> list[tuple[Any, ...]]:
    """Every relation row of the store, without its time (written by the decider
    once, then copied: the same in both stores)."""
    return _read_store(region, "SELECT user_id, other, friend, request_sent, request_received,"
                       " note, blocked, updated_at_ms FROM relations ORDER BY user_id, other")


def _read_seq(region: RegionProcess, user: str, conversation_id: str) -> int:
    rows = _read_store(region, "SELECT read_seq FROM user_conversations WHERE user_id = ? AND"
                       " conversation_id = ?", user, conversation_id)
    return int(rows[0][0]) if rows else 0


class Devices:
    """SDK clients by name ("alice@eu"), logged in in the order given (first logins
    place their users' homes), all closed at the end."""

    def __init__(self, regions: Regions) -> None:
        self.where = {"eu": regions[0], "us": regions[1]}
        self.clients: dict[str, Client] = {}

    async def login(self, *names: str) -> None:
        for name in names:
            user, region = name.split("@")
            client = Client([self.where[region].url], mint(user, f"{user}-{region}"),
                            request_timeout_s=30)
            await client.connect()
            self.clients[name] = client
            await asyncio.to_thread(wait_for, lambda u=user, r=region: _homed(
                self.where[r], u), 20, f"{user} homed somewhere, seen from {region}")

    def __getitem__(self, name: str) -> Client:
        return self.clients[name]

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def _homed(region: RegionProcess, user: str) -> bool:
    return bool(_read_store(region, "SELECT 1 FROM homes WHERE kind = 'user' AND key = ?"
                            " AND confirmed = 1", user))


@pytest.fixture
async def devices(regions: Regions) -> AsyncIterator[Devices]:
    eu, us, _, _ = regions
    found = Devices(regions)
    try:
        await found.login("alice@eu")
        await found.login("bob@us", "carol@us", "dave@us")
        await found.login("alice@us", "bob@eu", "carol@eu", "dave@eu")
        for user, home in (("alice", "eu"), ("bob", "us"), ("carol", "us"), ("dave", "us")):
            for region in (eu, us):
                assert _read_store(region, "SELECT region FROM homes WHERE kind = 'user'"
                                   " AND key = ?", user) == [(home,)], (user, region.name)
        yield found
    finally:
        await found.close()


async def _through_a_cut(cuts: Cuts, operations: Callable[[], Awaitable[None]],
                         after_s: float = 0.3, for_s: float = 2.0) -> None:
    """`operations` run while the region link is cut `after_s` in, and healed
    `for_s` later; the cut must fall in their middle (they retry what it refuses)."""
    running = asyncio.ensure_future(operations())
    try:
        await asyncio.sleep(after_s)
        assert not running.done(), "the operations ended before the cut"
        cuts.partition()
        await asyncio.sleep(for_s)
    finally:
        cuts.heal()
    await running


async def _friends(client: Client) -> dict[str, list[str]]:
    response = await client._relations()
    return {kind: sorted(r.user_id for r in getattr(response, kind))
            for kind in ("friends", "incoming", "outgoing", "blocked")}


async def test_a_request_made_in_one_region_is_accepted_in_the_other(
        regions: Regions, devices: Devices) -> None:
    """bob asks alice from us (the pair is decided in eu, alice's home: forwarded),
    alice accepts from eu while the link is cut (her accept waits for us to apply it,
    retried): both stores hold the same rows, and both users' devices in both regions
    list each other as friends and nothing pending."""
    eu, us, _, cuts = regions

    async def befriend() -> None:
        await _retried(lambda: devices["bob@us"].add_friend("alice", "hi from us"))
        # decided in eu, answered once us applied it: bob reads it back here at once
        assert (await _friends(devices["bob@us"]))["outgoing"] == ["alice"]
        for name in ("alice@eu", "alice@us"):  # the request reached eu, and us back
            await _wait_listed(devices[name], "incoming", "bob")
        await asyncio.sleep(0.5)  # the cut falls here
        relation = await _retried(lambda: devices["alice@eu"].accept_friend("bob"))
        assert relation.friend

    await _through_a_cut(cuts, befriend)
    await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 30, "caught up")
    rows = _relations(eu)
    assert rows == _relations(us)
    assert [r[:7] for r in rows] == [("alice", "bob", 1, 0, 0, "", 0),
                                     ("bob", "alice", 1, 0, 0, "", 0)]
    for name, other in (("alice@eu", "bob"), ("alice@us", "bob"), ("bob@eu", "alice"),
                        ("bob@us", "alice")):
        assert await _friends(devices[name]) == {
            "friends": [other], "incoming": [], "outgoing": [], "blocked": []}, name
    # decided in eu: bob's request came from us, alice's accept was eu's own
    assert _metric(us, "chatplane_region_friend_changes_forwarded_total") >= 1
    assert _metric(eu, "chatplane_region_friend_changes_served_total") >= 1
    # both of alice's devices were told, at one inbox_seq each time
    told = [await next_event(devices[name], "friend", timeout_s=30)
            for name in ("alice@eu", "alice@us")]
    assert told[0].message.inbox_seq == told[1].message.inbox_seq


async def test_requests_racing_from_both_regions_make_one_friendship(
        regions: Regions, devices: Devices) -> None:
    """carol (from eu) and dave (from us) ask each other at the same moment: their pair
    is decided in us (carol's home), one request after the other, so the second is the
    accept, and both stores and all four devices hold the friendship."""
    eu, us, _, _ = regions
    await asyncio.gather(devices["carol@eu"].add_friend("dave"),
                         devices["dave@us"].add_friend("carol"))
    await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 30, "caught up")
    assert _relations(eu) == _relations(us)
    assert [r[:7] for r in _relations(eu)] == [("carol", "dave", 1, 0, 0, "", 0),
                                               ("dave", "carol", 1, 0, 0, "", 0)]
    for name, other in (("carol@eu", "dave"), ("carol@us", "dave"), ("dave@eu", "carol"),
                        ("dave@us", "carol")):
        assert (await _friends(devices[name]))["friends"] == [other], name


async def _wait_listed(client: Client, kind: str, user: str, timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while user not in (await _friends(client))[kind]:
        assert loop.time() < deadline, f"{user} not in {kind}"
        await asyncio.sleep(0.1)


async def test_a_block_made_in_one_region_refuses_sends_in_the_other(
        regions: Regions, devices: Devices) -> None:
    """alice and bob chat in a 1:1 chat homed in eu; bob blocks alice from us while
    the link is cut (retried until it heals): alice's next sends are refused BLOCKED
    from both regions, by eu (the chat's home) and by us (where her device is)."""
    eu, us, _, cuts = regions
    chat = await devices["alice@eu"].direct("bob")
    await devices["alice@eu"].send_text(chat, "before")  # homes the chat in eu
    await devices["bob@us"].send_text(chat, "hello")

    async def block() -> None:
        await asyncio.sleep(0.5)  # the cut is on
        relation = await _retried(lambda: devices["bob@us"].block("alice"))
        assert relation.blocked

    await _through_a_cut(cuts, block)
    for name in ("alice@eu", "alice@us"):
        with pytest.raises(RequestError) as refused:
            await devices[name].send_text(chat, f"after the block, from {name}")
        assert refused.value.code == ErrorCode.BLOCKED, name
    assert await _friends(devices["bob@eu"]) == {
        "friends": [], "incoming": [], "outgoing": [], "blocked": ["alice"]}
    await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 30, "caught up")
    assert _relations(eu) == _relations(us)
    assert [m.text for m in await devices["bob@eu"].history(chat)] == ["before", "hello"]


async def test_the_consent_rule_at_a_groups_home_reads_a_friendship_made_elsewhere(
        regions: Regions, devices: Devices) -> None:
    """carol and dave become friends in us (their pair is decided there) while the
    link is cut; carol then adds dave to a group homed in eu: eu's consent rule finds
    them friends (the rows replicated) and adds him, where a non-friend is invited."""
    eu, us, _, cuts = regions
    group = await devices["carol@eu"].create_group("eu-group", [])  # homed in eu

    async def befriend() -> None:
        await _retried(lambda: devices["carol@us"].add_friend("dave"))
        await asyncio.sleep(0.5)  # the cut is on: the accept waits for eu to apply it
        await _retried(lambda: devices["dave@us"].accept_friend("carol"))

    await _through_a_cut(cuts, befriend)
    await devices["carol@us"].add_members(group, ["dave", "alice"])
    members = [m.user_id for m in await devices["carol@eu"].members(group)]
    assert members == ["carol", "dave"]  # alice, no friend of carol's, was invited
    invitation = await next_event(devices["alice@eu"], "invitation", timeout_s=30)
    assert invitation.detail["conversation_id"] == group
    await asyncio.to_thread(wait_for, lambda: caught_up(eu, us), 30, "caught up")
    assert _relations(eu) == _relations(us)


async def test_read_positions_set_in_one_region_are_seen_in_the_other(
        regions: Regions, devices: Devices) -> None:
    """bob sends ten messages to alice; alice reads up to 6 on her device in us while
    the link is cut (her read event goes to eu, her home: retried), then up to 8 in eu:
    both stores hold 8, her devices in both regions list the chat read to 8, and bob's
    receipts in both regions name her as a reader of message 8."""
    eu, us, _, cuts = regions
    chat = await devices["bob@us"].direct("alice")
    for i in range(10):
        await devices["bob@us"].send_text(chat, f"m{i}")  # homed in us

    async def read() -> None:
        await _wait_head(devices["alice@us"], chat, 10)
        await asyncio.sleep(0.5)  # the cut is on
        # refused (UNAVAILABLE) while her home is cut off: retried
        assert await _retried(lambda: devices["alice@us"].mark_read(chat, 6)) == 6
        await asyncio.to_thread(wait_for, lambda: _read_seq(eu, "alice", chat) == 6, 30,
                                "alice's read in us seen in eu")

    await _through_a_cut(cuts, read)
    await _wait_head(devices["alice@eu"], chat, 10)
    assert await devices["alice@eu"].mark_read(chat, 8) == 8
    await asyncio.to_thread(wait_for, lambda: _read_seq(us, "alice", chat) == 8, 30,
                            "alice's read in eu seen in us")
    assert _read_seq(eu, "alice", chat) == 8
    for name in ("alice@eu", "alice@us"):
        (listed,) = [c for c in await devices[name].conversations() if c.conversation_id == chat]
        assert (listed.read_seq, listed.unread) == (8, 2), name
    for name in ("bob@eu", "bob@us"):
        receipts = await devices[name].receipts(chat, 8)
        assert receipts.read == ["alice"], name


async def _retried(call: Callable[[], Awaitable[T]], timeout_s: float = 30) -> T:
    """`call` until it is not refused retriably: the SDK's own retries of a quick
    refusal (a forward to a home cut off) end before the link heals, so the app
    retries as well."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await call()
        except RequestError as exc:
            if not exc.retriable or loop.time() > deadline:
                raise
        await asyncio.sleep(0.2)


async def _wait_head(client: Client, conversation_id: str, head: int,
                     timeout_s: float = 30) -> None:
    """The chat, with `head` messages, in the client's region."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        listed = [c for c in await client.conversations() if c.conversation_id == conversation_id]
        if listed and listed[0].head_seq >= head:
            return
        assert loop.time() < deadline, f"{conversation_id} not at {head}"
        await asyncio.sleep(0.1)
