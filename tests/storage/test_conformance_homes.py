"""The Storage conformance suite, home regions (docs/architecture.md, "Regions").

Same `backend` fixture as test_conformance.py (SQLite and ScyllaDB): `offer_home`
keeps the first offer, lets its region confirm it, lets a higher epoch replace it,
and settles two regions proposing at once the same way in every store (the name
that sorts first wins an unconfirmed tie; a confirmed row yields only to a higher
epoch)."""

from __future__ import annotations

import asyncio

from chatplane.storage.base import CONVERSATION_HOME, USER_HOME, Home, Storage, home_replaces
from tests.storage.conftest import Backend


async def test_no_home_until_one_is_offered(storage: Storage) -> None:
    assert await storage.home(CONVERSATION_HOME, "d:alice:bob") is None
    assert await storage.offer_home(CONVERSATION_HOME, "d:alice:bob", Home("us", 1)) == Home("us", 1)
    assert await storage.home(CONVERSATION_HOME, "d:alice:bob") == Home("us", 1)
    # kinds are separate: the same key as a user has no home yet
    assert await storage.home(USER_HOME, "d:alice:bob") is None


async def test_a_home_is_durable(backend: Backend) -> None:
    storage = await backend.open()
    await storage.offer_home(USER_HOME, "alice", Home("eu", 1, confirmed=True))
    await backend.close_all()
    again = await backend.open()
    assert await again.home(USER_HOME, "alice") == Home("eu", 1, True)


async def test_confirm_then_keep_against_a_tie(storage: Storage) -> None:
    key = "d:a:b"
    await storage.offer_home(CONVERSATION_HOME, key, Home("us", 1))
    # an unconfirmed tie goes to the name that sorts first, whatever the order
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("zz", 1)) == Home("us", 1)
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("eu", 1)) == Home("eu", 1)
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("eu", 1, True)) == Home("eu", 1, True)
    # confirmed: no tie at its epoch takes it, not even a name sorting first
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("ap", 1)) == Home("eu", 1, True)
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("eu", 1)) == Home("eu", 1, True)
    # a lower epoch never, a higher one always (a move)
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("us", 0)) == Home("eu", 1, True)
    assert await storage.offer_home(CONVERSATION_HOME, key, Home("us", 2)) == Home("us", 2)
    assert await storage.home(CONVERSATION_HOME, key) == Home("us", 2)


async def test_concurrent_offers_settle_on_one_home(backend: Backend) -> None:
    first, second = await backend.open(), await backend.open()
    offers = [Home(region, 1) for region in ("us", "eu", "ap", "sa")] * 3
    results = await asyncio.gather(*(
        (first if i % 2 else second).offer_home(CONVERSATION_HOME, "g:race", offer)
        for i, offer in enumerate(offers)))
    stored = await first.home(CONVERSATION_HOME, "g:race")
    assert stored == Home("ap", 1)  # the name that sorts first
    # each answer was the row right after that offer: never a region that then lost a tie
    # to a later name (a winner can only be replaced by a name sorting before it)
    assert all(r.region >= "ap" for r in results)


def test_the_rule_is_a_total_order_at_one_epoch() -> None:
    a, b = Home("eu", 3), Home("us", 3)
    assert home_replaces(b, a) and not home_replaces(a, b)
    assert not home_replaces(Home("us", 3, True), a)
    assert home_replaces(None, a) and home_replaces(Home("eu", 3), Home("eu", 3, True))
    # a confirmed home (every store took it) replaces a proposal that lost
    assert home_replaces(a, Home("us", 3, True))
