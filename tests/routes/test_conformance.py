"""The Routes conformance suite: one behaviour, both stores (routes/base.py).

Runs unchanged against each store of the `backend` fixture (conftest.py):
memory, and Redis on a real redis-server. Registration and presence of
multi-device users, the newer connection keeping a device whatever order
the logins finish in (also racing), unregister deleting only its own
connection, routes expiring when no longer written, and refreshes putting
them back after the store lost them, the newest connection winning.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from chatplane.routes.base import RouteEntry, takes_route
from tests.routes.conftest import Backend


def route(user: str, device: str, gateway: str, conn: str, opened_ms: int = 1_000) -> RouteEntry:
    return RouteEntry(user, device, gateway, conn, opened_ms)


def test_the_rule_newer_wins_and_a_refresh_never_takes_from_an_equal() -> None:
    assert takes_route(1_000, 2_000, login=True) and takes_route(1_000, 2_000, login=False)
    assert not takes_route(2_000, 1_000, login=True)
    assert not takes_route(2_000, 1_000, login=False)
    assert takes_route(1_000, 1_000, login=True)  # the login that arrives now
    assert not takes_route(1_000, 1_000, login=False)  # the holder stays


async def test_devices_of_users_are_routed_and_present(backend: Backend) -> None:
    routes = backend.open()
    phone = route("alice", "phone", "gw-1", "c1")
    laptop = route("alice", "laptop", "gw-2", "c2")
    tablet = route("alice", "tablet", "gw-2", "c3")
    bob = route("bob", "phone", "gw-1", "c4")
    assert await routes.register([phone, laptop, tablet, bob]) == [None] * 4
    found = await routes.lookup(["alice", "bob", "carol"])
    assert sorted(found["alice"], key=lambda r: r.device_id) == [laptop, phone, tablet]
    assert found["bob"] == [bob]
    assert "carol" not in found  # offline: absent
    assert {u: len(r) for u, r in found.items()} == {"alice": 3, "bob": 1}  # presence
    by_gateway = await routes.users_by_gateway(["alice", "bob", "carol"])
    assert by_gateway == {"gw-1": ["alice", "bob"], "gw-2": ["alice"]}  # each user once
    assert await routes.register([]) == []
    assert await routes.lookup([]) == {}
    assert await routes.users_by_gateway([]) == {}
    await routes.refresh([])
    await routes.unregister([])


async def test_registering_a_connection_again_changes_nothing(backend: Backend) -> None:
    routes = backend.open()
    phone = route("u", "phone", "gw-1", "c1")
    assert await routes.register([phone]) == [None]
    assert await routes.register([phone]) == [None]  # a retried call kicks nobody
    await routes.refresh([phone])
    assert (await routes.lookup(["u"]))["u"] == [phone]


async def test_a_newer_connection_replaces_the_older_which_is_kicked(backend: Backend) -> None:
    routes = backend.open()
    old = route("u", "phone", "gw-1", "c1", 1_000)
    new = route("u", "phone", "gw-2", "c9", 2_000)
    assert await routes.register([old]) == [None]
    assert await routes.register([new]) == [old]  # the caller kicks old
    await routes.refresh([old])  # gw-1's periodic refresh must not take it back
    assert (await routes.lookup(["u"]))["u"] == [new]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_the_newest_connection_wins_whatever_order_logins_finish(
        backend: Backend, order: tuple[int, ...]) -> None:
    routes = backend.open()
    conns = [route("u", "phone", f"gw-{i}", f"c{i}", 1_000 * (i + 1)) for i in range(3)]
    kicked = []
    for i in order:
        (k,) = await routes.register([conns[i]])
        if k is not None:
            kicked.append(k)
    assert (await routes.lookup(["u"]))["u"] == [conns[2]]
    assert sorted(kicked, key=lambda r: r.opened_ms) == conns[:2]  # each loser kicked once


async def test_racing_registrations_leave_the_newest_connection(backend: Backend) -> None:
    routes = backend.open()
    entries = [route("r", "phone", f"gw-{i % 3}", f"c{i}", 1_000 + i) for i in range(40)]
    shuffled = entries[::-1][::2] + entries[::2]  # newest first, then interleaved
    await asyncio.gather(*(routes.register([e]) for e in shuffled))
    assert (await routes.lookup(["r"]))["r"] == [entries[-1]]


async def test_as_new_a_login_takes_the_device_and_a_refresh_does_not(backend: Backend) -> None:
    routes = backend.open()
    first = route("u", "phone", "gw-1", "c1", 5_000)
    second = route("u", "phone", "gw-2", "c2", 5_000)  # opened in the same millisecond
    assert await routes.register([first]) == [None]
    assert await routes.register([second]) == [first]
    await routes.refresh([first])
    assert (await routes.lookup(["u"]))["u"] == [second]
    unknown = route("u", "phone", "gw-3", "c3", 0)  # no open time: counts as oldest
    assert await routes.register([unknown]) == [unknown]


async def test_unregister_deletes_only_its_own_connection(backend: Backend) -> None:
    routes = backend.open()
    old = route("u", "phone", "gw-1", "c1", 1_000)
    new = route("u", "phone", "gw-2", "c9", 2_000)
    laptop = route("u", "laptop", "gw-1", "c5", 1_000)
    await routes.register([old, laptop])
    await routes.register([new])
    await routes.unregister([old])  # the old connection closing erases nothing
    assert sorted((await routes.lookup(["u"]))["u"], key=lambda r: r.device_id) == [laptop, new]
    same_id_elsewhere = route("u", "phone", "gw-1", "c9", 2_000)  # c9 of another gateway
    await routes.unregister([same_id_elsewhere])
    assert new in (await routes.lookup(["u"]))["u"]
    await routes.unregister([new, laptop])
    assert await routes.lookup(["u"]) == {}
    assert await routes.users_by_gateway(["u"]) == {}
    await routes.unregister([new])  # again: nothing left to delete


async def test_a_refresh_never_takes_the_device_from_a_newer_connection(
        backend: Backend) -> None:
    routes = backend.open()
    newer = route("u", "phone", "gw-2", "c9", 2_000)
    older = route("u", "phone", "gw-1", "c1", 1_000)
    assert await routes.register([newer]) == [None]
    assert await routes.register([older]) == [older]  # refused: the caller kicks it
    await routes.refresh([older])
    await routes.unregister([older])
    assert (await routes.lookup(["u"]))["u"] == [newer]


@pytest.mark.parametrize("newest_first", [True, False])
async def test_refreshes_rebuild_lost_routes_and_the_newest_connection_wins(
        backend: Backend, newest_first: bool) -> None:
    routes = backend.open()
    older = route("u", "phone", "gw-1", "c1", 1_000)  # a stale one, not yet gone
    newest = route("u", "phone", "gw-2", "c2", 3_000)
    laptop = route("u", "laptop", "gw-1", "c3", 1_000)
    await routes.register([older, laptop])
    await routes.register([newest])
    routes = await backend.lose_everything()
    assert await routes.lookup(["u"]) == {}
    # both gateways re-assert what they hold, in either order
    gw1, gw2 = [older, laptop], [newest]
    for refresh in ([gw2, gw1] if newest_first else [gw1, gw2]):
        await routes.refresh(refresh)
    assert sorted((await routes.lookup(["u"]))["u"], key=lambda r: r.device_id) == [
        laptop, newest]
    assert await routes.users_by_gateway(["u"]) == {"gw-1": ["u"], "gw-2": ["u"]}


async def test_routes_no_longer_written_expire(backend: Backend) -> None:
    """A killed gateway's routes go by themselves; refreshed ones stay."""
    routes = backend.open(ttl_s=1.0)
    alive = route("a", "phone", "gw-1", "c1")
    killed = route("b", "phone", "gw-2", "c2")
    await routes.register([alive, killed])
    await asyncio.sleep(0.6)
    await routes.refresh([alive])
    await asyncio.sleep(0.7)  # past the unrefreshed one's TTL, within the refreshed one's
    assert await routes.lookup(["a", "b"]) == {"a": [alive]}
    assert await routes.users_by_gateway(["a", "b"]) == {"gw-1": ["a"]}
    assert await routes.register([killed]) == [None]  # an expired route holds nothing back
