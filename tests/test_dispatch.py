"""ipconf ranking: least loaded first, never draining, spread by uid."""

from __future__ import annotations

from chatplane.ipconf.dispatch import GatewayInfo, rank


def gw(name: str, connections: int, draining: bool = False, load: float = 0.0) -> GatewayInfo:
    return GatewayInfo(name, f"ws://{name}/ws", "", connections, load, draining)


def test_draining_never_and_least_loaded_first() -> None:
    ranked = rank([gw("a", 900), gw("b", 100), gw("c", 10, draining=True)], "u1")
    assert [g.gateway_id for g in ranked] == ["b", "a"]


def test_near_equal_gateways_are_spread_across_users() -> None:
    gateways = [gw("a", 510), gw("b", 530), gw("c", 505)]
    firsts = {rank(gateways, f"user{i}")[0].gateway_id for i in range(50)}
    assert firsts == {"a", "b", "c"}  # no herd onto one of them
