"""ipconf ranking: least loaded first, never draining, spread by uid; other regions by health."""

from __future__ import annotations

from chatplane.ipconf.dispatch import GatewayInfo, PeerHealth, by_health, rank


def gw(name: str, connections: int, draining: bool = False, load: float = 0.0) -> GatewayInfo:
    return GatewayInfo(name, f"ws://{name}/ws", "", connections, load, draining)


def test_draining_never_and_least_loaded_first() -> None:
    ranked = rank([gw("a", 900), gw("b", 100), gw("c", 10, draining=True)], "u1")
    assert [g.gateway_id for g in ranked] == ["b", "a"]


def test_near_equal_gateways_are_spread_across_users() -> None:
    gateways = [gw("a", 510), gw("b", 530), gw("c", 505)]
    firsts = {rank(gateways, f"user{i}")[0].gateway_id for i in range(50)}
    assert firsts == {"a", "b", "c"}  # no herd onto one of them


def region_gateway(name: str) -> dict[str, str]:
    return {"gateway_id": f"region:{name}", "ws": f"wss://chat.{name}/ws", "tcp": "",
            "region": name}


def test_fallbacks_are_the_reachable_regions_nearest_first_and_the_lost_ones_last() -> None:
    listed = [region_gateway(r) for r in ("ap", "us", "sa", "af", "eu2")]
    health = {"ap": PeerHealth(False), "us": PeerHealth(True, 0.080),
              "sa": PeerHealth(True, 0.030), "eu2": PeerHealth(True, 0.034)}
    ordered = [g["region"] for g in by_health(listed, health)]
    # sa and eu2 are within one 10 ms step: the peer list's order; af not probed yet
    assert ordered == ["sa", "eu2", "us", "af", "ap"]
    assert by_health(listed, {}) == listed  # nothing probed (ipconf): the list's order
