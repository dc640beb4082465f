"""The failover witness's grant rule and the region's view of its lease, without sockets
(regions/witnessing.py, regions/leases.py; docs/architecture.md, "Failover"), and the
witness's SQLite records across a restart."""

from __future__ import annotations

from pathlib import Path

from chatplane.regions.leases import DRIFT, Lease
from chatplane.regions.witness import WitnessStore
from chatplane.regions.witnessing import Grants, Record, Wish
from chatplane.v1 import witness_pb2 as wpb

TTL = 2.0


def leased(*regions: str, now: float = 0.0) -> Grants:
    grants = Grants()
    for region in regions:
        assert grants.renew(region, TTL, Wish.KEEP, now).held
    return grants


def test_no_takeover_while_the_peer_holds_its_lease() -> None:
    grants = leased("eu", "us")
    answer = grants.take_over("us", "eu", 1.9)
    assert not answer.granted and "holds its lease" in answer.reason
    assert grants.take_over("us", "eu", 2.0).granted


def test_a_partition_where_both_reach_the_witness_grants_neither_side() -> None:
    grants = leased("eu", "us")
    for now in (0.5, 1.0, 1.5, 2.5, 3.0):  # both keep renewing while they ask
        grants.renew("eu", TTL, Wish.SET, now)
        grants.renew("us", TTL, Wish.SET, now)
        assert not grants.take_over("us", "eu", now).granted
        assert not grants.take_over("eu", "us", now).granted


def test_of_two_regions_asking_at_most_one_is_granted() -> None:
    grants = leased("eu", "us")  # both leases lapse (e.g. a witness cut, then a partition)
    first = grants.take_over("us", "eu", 10.0)
    second = grants.take_over("eu", "us", 10.0)
    assert first.granted and not second.granted
    assert "itself was taken over by us" in second.reason
    assert grants.records["eu"].taken_by == "us" and grants.records["us"].alone
    assert set(first.changed) == {"eu", "us"}  # both records stored with the grant


def test_the_taken_region_is_refused_its_lease_until_the_taker_clears_alone() -> None:
    grants = leased("eu", "us")
    grant = grants.take_over("us", "eu", 5.0).grant
    refused = grants.renew("eu", TTL, Wish.KEEP, 6.0)
    assert not refused.held and refused.taken_by == "us" and refused.taken_grant == grant
    assert f"taken over by us (grant {grant})" == refused.reason
    # us keeps its alone record until eu confirmed its log: eu stays refused
    assert grants.renew("us", TTL, Wish.KEEP, 6.0).alone
    assert not grants.renew("eu", TTL, Wish.SET, 6.5).held
    cleared = grants.renew("us", TTL, Wish.CLEAR, 7.0)
    assert not cleared.alone and set(cleared.changed) == {"us", "eu"}
    back = grants.renew("eu", TTL, Wish.KEEP, 7.5)
    assert back.held and back.taken_grant == grant  # eu sees it was taken: drops its cache
    # and from then on eu may take us over in turn
    assert grants.take_over("eu", "us", 20.0).granted


def test_a_region_that_acked_alone_is_never_taken_over() -> None:
    grants = leased("eu", "us")
    assert grants.renew("eu", TTL, Wish.SET, 1.0).alone
    answer = grants.take_over("us", "eu", 100.0)  # eu's lease long expired
    assert not answer.granted and "acked alone" in answer.reason
    assert grants.renew("eu", TTL, Wish.CLEAR, 101.0).held
    assert grants.take_over("us", "eu", 200.0).granted


def test_a_repeated_request_gets_the_same_grant_and_a_third_region_none() -> None:
    grants = leased("eu", "us", "ap")
    first = grants.take_over("us", "eu", 10.0)
    again = grants.take_over("us", "eu", 10.5)
    assert again.granted and again.grant == first.grant and not again.changed
    assert not grants.take_over("ap", "eu", 11.0).granted
    assert not grants.take_over("us", "us", 11.0).granted


def test_a_restarted_witness_counts_every_lease_as_renewed_at_its_start() -> None:
    stored = {"eu": Record(ttl_s=TTL), "us": Record(ttl_s=TTL, alone=True)}
    grants = Grants.restored(stored, grants=4, now=50.0)
    assert not grants.take_over("eu", "us", 51.0).granted  # us: alone
    assert not grants.take_over("us", "eu", 51.9).granted  # eu: leased until 52
    answer = grants.take_over("us", "eu", 52.0)
    assert answer.granted and answer.grant == 5


def test_the_lease_is_measured_from_the_send_shortened_for_clock_rates() -> None:
    lease = Lease(ttl_s=TTL)
    assert not lease.held(0.0) and not lease.may_ack_alone(0.0)
    stale = lease.answered(wpb.LeaseReply(held=True, alone=False), sent_at=10.0)
    assert not stale
    assert lease.held(10.0 + TTL * (1 - DRIFT) - 0.01)
    assert not lease.held(10.0 + TTL * (1 - DRIFT))
    assert not lease.may_ack_alone(11.0)  # held, but not recorded alone
    lease.answered(wpb.LeaseReply(held=True, alone=True), sent_at=11.0)
    assert lease.may_ack_alone(11.5)
    assert not lease.may_ack_alone(11.0 + TTL)  # not renewed: stops acking alone


def test_a_refusal_ends_the_lease_at_once_and_a_new_takeover_marks_homes_stale() -> None:
    lease = Lease(ttl_s=TTL)
    assert not lease.answered(wpb.LeaseReply(held=True, taken_grant=0), sent_at=0.0)
    assert lease.answered(wpb.LeaseReply(held=False, taken_by="us", taken_grant=3,
                                         reason="taken over by us (grant 3)"), sent_at=0.5)
    assert not lease.held(0.6) and lease.taken_by == "us"
    # lifted: held again, and no second "stale" for the same grant
    assert not lease.answered(wpb.LeaseReply(held=True, taken_grant=3), sent_at=1.0)
    assert lease.held(1.5) and not lease.taken_by
    # taken over and lifted again while this region never heard the refusal
    assert lease.answered(wpb.LeaseReply(held=True, taken_grant=7), sent_at=2.0)


def test_a_restarted_witness_reads_its_records_back_and_never_grants_twice(
        tmp_path: Path) -> None:
    store = WitnessStore(tmp_path / "witness.db")
    grants = store.load(now=0.0)
    for region in ("eu", "us"):
        store.save(grants, grants.renew(region, TTL, Wish.KEEP, 0.0).changed)
    answer = grants.take_over("us", "eu", 5.0)
    store.save(grants, answer.changed)
    store.close()

    store = WitnessStore(tmp_path / "witness.db")  # a restart: only the file survives
    again = store.load(now=100.0)
    store.close()
    assert again.grants == 1 and again.records["eu"].taken_by == "us"
    assert again.records["us"].alone and again.records["eu"].ttl_s == TTL
    assert not again.take_over("eu", "us", 200.0).granted  # eu was taken: refused
    assert not again.renew("eu", TTL, Wish.KEEP, 200.0).held
    assert again.take_over("us", "eu", 200.0).grant == answer.grant  # the same grant
