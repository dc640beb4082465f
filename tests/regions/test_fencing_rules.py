"""The decisions of a three-region takeover (regions/fencing.py), without sockets:
which survivor holds the most of a lost region's homes, and what the taker logs again
for the others."""

from __future__ import annotations

from chatplane.regions.fencing import furthest, least_heads

CHAT, GROUP, USER = ("conversation", "d:a:b"), ("conversation", "g:1"), ("user", "a")


def test_the_survivor_holding_at_least_as_much_of_every_home_is_the_furthest() -> None:
    mine = {CHAT: 10, GROUP: 4, USER: 7}
    assert furthest(mine, {"us": {CHAT: 10, GROUP: 3, USER: 7}}) == ""
    assert furthest(mine, {"us": {CHAT: 9}, "ap": {CHAT: 10, GROUP: 4}}) == ""  # a tie too


def test_a_survivor_holding_more_of_one_home_is_named() -> None:
    mine = {CHAT: 10, GROUP: 4}
    assert furthest(mine, {"us": {CHAT: 8, GROUP: 5}}) == (
        "us holds conversation g:1 to 5, this region to 4")
    # a home this region holds nothing of, which another holds messages of
    assert furthest(mine, {"us": {USER: 1}}).startswith("us holds user a to 1")
    assert furthest(mine, {"us": {USER: 0}}) == ""  # a row without messages


def test_the_taker_logs_again_past_the_least_any_other_survivor_holds() -> None:
    theirs = [{CHAT: 8, GROUP: 4}, {CHAT: 9}]
    # per home the lowest head; a survivor without the home holds 0 of it
    assert least_heads(theirs, [CHAT, GROUP, USER]) == {CHAT: 8, GROUP: 0, USER: 0}
    assert least_heads([], [CHAT]) == {CHAT: 0}
