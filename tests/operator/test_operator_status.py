"""Pure status computation: conditions in metav1.Condition form, per-region aggregation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatplane_operator import api, podstate, reachability, status

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def ready_tiers(cluster: api.ChatCluster, region: api.Region) -> dict[str, status.WorkloadState]:
    return {t: status.WorkloadState(replicas=region.tiers[t].replicas,
                                    ready=region.tiers[t].replicas,
                                    updated=region.tiers[t].replicas, up_to_date=True)
            for t in api.TIERS}


def cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_all_ready(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r), connections=10)
           for r in cluster.regions}
    st = status.compute(cluster, obs, now=NOW)
    assert st["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "Ready": "True", "Available": "True", "Progressing": "False", "Degraded": "False",
        "ReplicationReady": "False"}  # no migration Job has succeeded yet
    assert st["readyRegions"] == "2/2" and st["readyGateways"] == "6/6"
    assert st["connections"] == 20
    for c in st["conditions"]:
        assert set(c) == {"type", "status", "reason", "message", "observedGeneration",
                          "lastTransitionTime"}


def test_replication_ready_needs_every_region_wired_and_the_map_migrated(
    body: dict[str, Any],
) -> None:
    body["spec"]["peers"] = [{"name": "ap", "endpoint": "im.ap.example:9090",
                              "datacenter": "ap-south", "replicationFactor": 2}]
    cluster = api.parse(body)
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r)) for r in cluster.regions}
    pending = status.compute(cluster, obs, now=NOW, migration={"migrationJob": "j",
                                                               "migrated": False})
    assert cond(pending, "ReplicationReady")["reason"] == "MigrationPending"
    assert "{'eu': 3, 'us': 3, 'ap-south': 2}" in cond(pending, "ReplicationReady")["message"]
    done = status.compute(cluster, obs, pending, now=LATER,
                          migration={"migrationJob": "j", "migrated": True})
    wired = cond(done, "ReplicationReady")  # wired, but no data plane says it reaches them
    assert (wired["status"], wired["reason"]) == ("Unknown", "ReplicationWired")
    assert "every region lists its 2 peer(s)" in wired["message"]
    assert "no region's data plane reports its peers yet" in wired["message"]
    obs["us"] = status.RegionObservation({}, error=("SecretNotFound", "no redis"))
    broken = status.compute(cluster, obs, done, now=LATER)  # the Job status is kept
    assert cond(broken, "ReplicationReady")["reason"] == "RegionNotWired"
    assert broken["storage"] == {"migrationJob": "j", "migrated": True}


def test_nothing_observed_is_not_ready_nor_available(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    st = status.compute(cluster, {}, now=NOW)
    assert cond(st, "Ready")["status"] == "False"
    assert cond(st, "Available")["status"] == "False"
    assert "eu" in cond(st, "Available")["message"]
    assert st["readyRegions"] == "0/2"


def test_one_degraded_region_degrades_the_cluster_with_its_reason(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    eu = cluster.regions[0]
    obs = {
        "eu": status.RegionObservation(ready_tiers(cluster, eu)),
        "us": status.RegionObservation({}, error=(api.Reason.SECRET_NOT_FOUND,
                                                  "Secret chat/redis-us not found")),
    }
    st = status.compute(cluster, obs, now=NOW)
    degraded = cond(st, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == api.Reason.SECRET_NOT_FOUND
    assert degraded["message"] == "us: Secret chat/redis-us not found"
    us_status = next(r for r in st["regions"] if r["name"] == "us")
    assert cond(us_status, "Degraded")["status"] == "True"
    assert cond(st, "Ready")["status"] == "False"
    assert st["readyRegions"] == "1/2"


def test_two_degraded_regions_aggregate(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    err = status.RegionObservation({}, error=(api.Reason.APPLY_FAILED, "boom"))
    st = status.compute(cluster, {"eu": err, "us": err}, now=NOW)
    assert cond(st, "Degraded")["reason"] == api.Reason.REGION_DEGRADED
    assert cond(st, "Degraded")["message"] == "eu: boom; us: boom"


def test_rollout_in_progress(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r)) for r in cluster.regions}
    eu = dict(obs["eu"].tiers)
    eu["gateway"] = status.WorkloadState(replicas=3, ready=3, updated=1, up_to_date=True)
    obs["eu"] = status.RegionObservation(eu)
    st = status.compute(cluster, obs, now=NOW)
    assert cond(st, "Progressing")["status"] == "True"
    assert "eu" in cond(st, "Progressing")["message"]
    assert cond(st, "Available")["status"] == "True"
    assert cond(st, "Ready")["status"] == "False"


def test_transition_time_kept_while_status_holds(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    first = status.compute(cluster, {}, now=NOW)
    again = status.compute(cluster, {}, previous=first, now=LATER)
    assert again == first  # nothing changed: an identical status, so no write
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r)) for r in cluster.regions}
    ready = status.compute(cluster, obs, previous=first, now=LATER)
    assert cond(ready, "Ready")["lastTransitionTime"] == LATER
    assert cond(ready, "Degraded")["lastTransitionTime"] == NOW


def test_workload_state_from_object() -> None:
    obj = {"metadata": {"generation": 3}, "spec": {"replicas": 4},
           "status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 4}}
    assert status.WorkloadState.from_object(obj) == status.WorkloadState(4, 2, 4, True)
    stale = {**obj, "status": {**obj["status"], "observedGeneration": 2}}
    assert status.WorkloadState.from_object(stale).up_to_date is False
    assert status.WorkloadState.from_object(None) == status.WorkloadState()


def _report(pod: str, **peers: dict[str, Any]) -> reachability.PodReport:
    return reachability.PodReport(pod, {"peers": [{"name": n, **v} for n, v in peers.items()]})


UP = {"reachable": True, "ok": True, "error": ""}
DOWN = {"reachable": False, "ok": False, "error": "UNAVAILABLE: connection refused"}
OTHER_KEY = {"reachable": True, "ok": False, "error": "signs tokens with a different key"}


def _status_with(body: dict[str, Any],
                 views: Mapping[str, reachability.RegionPeers | None]) -> dict[str, Any]:
    """The status of `body` with peer `ap` added, every tier ready and the peer views."""
    body["spec"]["peers"] = [{"name": "ap", "endpoint": "im.ap.example:9090",
                              "datacenter": "ap-south", "replicationFactor": 2}]
    cluster = api.parse(body)
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r), peers=views.get(r.name))
           for r in cluster.regions}
    return status.compute(cluster, obs, now=NOW,
                          migration={"migrationJob": "j", "migrated": True})


def _replication_with(body: dict[str, Any],
                      views: Mapping[str, reachability.RegionPeers | None]) -> dict[str, Any]:
    return cond(_status_with(body, views), "ReplicationReady")


def test_replication_ready_when_every_region_reaches_every_peer(body: dict[str, Any]) -> None:
    views = {"eu": reachability.summarize([_report("eu-im-0", us=UP, ap=UP),
                                           _report("eu-im-1", us=UP, ap=UP)]),
             "us": reachability.summarize([_report("us-im-0", eu=UP, ap=UP)])}
    ready = _replication_with(body, views)
    assert (ready["status"], ready["reason"]) == ("True", "PeersReachable")
    assert "every region's data plane reaches its 2 peer(s)" in ready["message"]


def test_one_pod_that_cannot_reach_a_peer_names_region_peer_and_pod(body: dict[str, Any]) -> None:
    views = {"eu": reachability.summarize([_report("eu-im-0", us=UP, ap=UP),
                                           _report("eu-im-1", us=DOWN, ap=UP)]),
             "us": reachability.summarize([_report("us-im-0", eu=UP, ap=OTHER_KEY)])}
    down = _replication_with(body, views)
    assert (down["status"], down["reason"]) == ("False", "PeerUnreachable")
    assert down["message"] == ("eu → us: UNAVAILABLE: connection refused (pod eu-im-1); "
                               "us → ap: signs tokens with a different key (pod us-im-0)")
    regions = {r["name"]: r for r in _status_with(body, views)["regions"]}
    assert regions["eu"]["peers"] == [
        {"name": "us", "state": "Unreachable",
         "message": "UNAVAILABLE: connection refused (pod eu-im-1)"},
        {"name": "ap", "state": "Reachable", "message": ""}]
    assert regions["us"]["peers"][1]["state"] == "Mismatch"
    views["eu"] = reachability.summarize([_report("eu-im-0", us=UP, ap=UP)])
    mismatch = _replication_with(body, views)
    assert (mismatch["status"], mismatch["reason"]) == ("False", "PeerMismatch")


def test_a_region_without_a_report_or_an_older_peer_list_is_missing(body: dict[str, Any]) -> None:
    silent = reachability.summarize([reachability.PodReport("us-im-0", error="timed out")])
    views = {"eu": reachability.summarize([_report("eu-im-0", us=UP)]), "us": silent}
    missing = _replication_with(body, views)
    assert (missing["status"], missing["reason"]) == ("False", "PeerReportMissing")
    assert reachability.status_rows(["us", "ap"], views["eu"], api.Replication())[1] == {
        "name": "ap", "state": "NotListed", "message": "no im pod lists this peer yet"}
    assert missing["message"] == ("eu → ap: not in its peer list yet; "
                                  "us: no peer report (us-im-0: timed out)")


def test_a_peer_listed_by_only_some_pods_is_not_seen_yet() -> None:
    view = reachability.summarize([_report("a", us=UP, ap=UP), _report("b", us=UP)])
    assert view.seen("us") == reachability.PeerSeen("ok")
    assert view.seen("ap") == reachability.PeerSeen("missing", "not listed by every im pod yet")
    found = reachability.problems({"eu": ["us", "ap"]}, {"eu": view})
    assert found == [("missing", "eu → ap: not listed by every im pod yet")]
    assert reachability.status_rows(["ap"], view, api.Replication())[0]["state"] == "NotListed"
    assert view.seen("sa") is None and view.answered == ("a", "b")


def _replicating(lag: int = 0, ago: float | None = 0.4, trimmed: bool = False,
                 error: str = "") -> dict[str, Any]:
    """A reachable peer whose log the pod applies (`/v1/peers` of `chatplane up`)."""
    return {**UP, "replication": {
        "applied_to": 500, "peer_head": 500 + lag, "lag": lag, "connected": ago is not None,
        "entries_applied": 500, "last_batch_s_ago": ago, "reconnects": 0, "error": error,
        "trimmed_past_cursor": trimmed}}


def test_replication_ready_when_every_region_applies_every_peers_log_within_bounds(
    body: dict[str, Any],
) -> None:
    views = {"eu": reachability.summarize([_report("eu-im-0", us=_replicating(12), ap=UP)]),
             "us": reachability.summarize([_report("us-im-0", eu=_replicating(), ap=UP)])}
    ready = _replication_with(body, views)
    assert (ready["status"], ready["reason"]) == ("True", "ReplicationInSync")
    assert ("every region's data plane reaches its 2 peer(s) and applies their logs within "
            "1000 entries and 10 s") in ready["message"]
    eu = next(r for r in _status_with(body, views)["regions"] if r["name"] == "eu")
    assert eu["peers"][0]["replication"] == {"state": "InSync", "lag": 12, "appliedTo": 500,
                                             "peerHead": 512, "connected": True,
                                             "lastBatchSecondsAgo": 0}
    assert "replication" not in eu["peers"][1]  # ap: the keyspace replicates, no log lag


def test_a_lagging_peer_makes_replication_not_ready_naming_region_peer_and_lag(
    body: dict[str, Any],
) -> None:
    views = {"eu": reachability.summarize([_report("eu-im-0", us=_replicating(3), ap=UP),
                                           _report("eu-im-1", us=_replicating(1500), ap=UP)]),
             "us": reachability.summarize([_report("us-im-0", eu=_replicating(), ap=UP)])}
    lagging = _replication_with(body, views)
    assert (lagging["status"], lagging["reason"]) == ("False", "ReplicationLagging")
    assert lagging["message"] == "eu ← us: lag 1500 entries (max 1000) (pod eu-im-1)"
    body["spec"]["replication"] = {"maxLagEntries": 2000}
    assert _replication_with(body, views)["status"] == "True"  # the bound is the spec's


def test_a_silent_or_trimmed_stream_is_not_ready_even_with_no_lag(body: dict[str, Any]) -> None:
    stalled = {"eu": reachability.summarize([_report(
                   "eu-im-0", us=_replicating(0, 42.5, error="UNAVAILABLE: reset"), ap=UP)]),
               "us": reachability.summarize([_report("us-im-0", eu=_replicating(0, None),
                                                     ap=UP)])}
    down = _replication_with(body, stalled)
    assert (down["status"], down["reason"]) == ("False", "ReplicationLagging")
    assert down["message"] == (
        "eu ← us: lag 0 entries, last batch 42.5 s ago (max 10 s), UNAVAILABLE: reset "
        "(pod eu-im-0); us ← eu: lag 0 entries, no batch yet (max 10 s) (pod us-im-0)")
    rows = {r["name"]: r["peers"][0]["replication"]["state"]
            for r in _status_with(body, stalled)["regions"]}
    assert rows == {"eu": "Stalled", "us": "Stalled"}
    trimmed = {"eu": reachability.summarize([_report("eu-im-0", us=_replicating(9, 0.2, True),
                                                     ap=UP)]),
               "us": reachability.summarize([_report("us-im-0", eu=_replicating(), ap=UP)])}
    assert "eu ← us: the peer trimmed its log past position 500" in _replication_with(
        body, trimmed)["message"]


def test_an_unreachable_peer_is_named_first_with_the_lag_after(body: dict[str, Any]) -> None:
    cut = {**DOWN, "replication": _replicating(0, 30.0)["replication"]}
    views = {"eu": reachability.summarize([_report("eu-im-0", us=cut, ap=UP)]),
             "us": reachability.summarize([_report("us-im-0", eu=_replicating(), ap=UP)])}
    down = _replication_with(body, views)
    assert (down["status"], down["reason"]) == ("False", "PeerUnreachable")
    assert down["message"] == ("eu → us: UNAVAILABLE: connection refused (pod eu-im-0); "
                               "eu ← us: lag 0 entries, last batch 30.0 s ago (max 10 s) "
                               "(pod eu-im-0)")


def _pod(name: str, region: str, tier: str, version: str, ready: bool = True,
         unschedulable: str = "") -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": unschedulable}]
    return {"metadata": {"name": name, "labels": {
        "chatplane.dev/region": region, "app.kubernetes.io/component": tier,
        "app.kubernetes.io/version": version}},
        "status": {"phase": "Pending" if unschedulable else "Running",
                   "conditions": conditions}}


def test_version_is_what_the_ready_pods_run(body: dict[str, Any]) -> None:
    cluster = api.parse(body)  # the spec asks for 0.1.0
    pods = [_pod("g0", "eu", "gateway", "0.1.0"), _pod("g1", "eu", "gateway", "0.2.0"),
            _pod("g2", "eu", "gateway", "0.2.0", ready=False),
            _pod("i0", "us", "im", "0.2.0"), _pod("m0", "eu", "migrate", "0.3.0")]
    listed = podstate.by_region(pods, cluster.regions)
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r), pods=listed[r.name])
           for r in cluster.regions}
    st = status.compute(cluster, obs, now=NOW)
    assert st["version"] == "0.1.0, 0.2.0"  # mid-rollout; not the Job's, not the spec's
    assert st["versions"] == [{"version": "0.1.0", "readyPods": 1},
                              {"version": "0.2.0", "readyPods": 2}]
    none_ready = {r.name: status.RegionObservation({}, pods=podstate.RegionPods())
                  for r in cluster.regions}
    assert status.compute(cluster, none_ready, now=NOW)["version"] == ""
    # pods not listed this pass: the last known versions stay
    unread = {r.name: status.RegionObservation(ready_tiers(cluster, r)) for r in cluster.regions}
    assert status.compute(cluster, unread, st, now=LATER)["version"] == "0.1.0, 0.2.0"


def test_pods_the_scheduler_cannot_place_are_named_with_the_label_to_set(
    body: dict[str, Any],
) -> None:
    cluster = api.parse(body)
    why = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    listed = podstate.by_region([_pod("chat-eu-im-1", "eu", "im", "0.1.0", unschedulable=why),
                                 _pod("chat-eu-im-2", "eu", "im", "0.1.0", unschedulable=why)],
                                cluster.regions)
    tiers = dict(ready_tiers(cluster, cluster.regions[0]))
    tiers["im"] = status.WorkloadState(replicas=2, ready=0, updated=2, up_to_date=True)
    obs = {"eu": status.RegionObservation(tiers, pods=listed["eu"]),
           "us": status.RegionObservation(ready_tiers(cluster, cluster.regions[1]))}
    eu = status.compute(cluster, obs, now=NOW)["regions"][0]
    available = cond(eu, "Available")
    assert (available["status"], available["reason"]) == ("False", "PodsUnschedulable")
    assert f"chat-eu-im-1: {why} and 1 more" in available["message"]
    assert "topology.kubernetes.io/region=eu" in available["message"]


def test_migration_gates_ready_and_a_failed_job_degrades(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    obs = {r.name: status.RegionObservation(ready_tiers(cluster, r)) for r in cluster.regions}
    running = status.compute(cluster, obs, now=NOW,
                             migration={"migrationJob": "chat-migrate-1", "migrated": False})
    assert (cond(running, "Progressing")["status"], cond(running, "Progressing")["reason"]) \
        == ("True", "MigrationRunning")
    assert cond(running, "Ready")["status"] == "False"
    assert "chat-migrate-1" in cond(running, "Ready")["message"]
    assert cond(running, "Degraded")["status"] == "False"
    failed = status.compute(cluster, obs, running, now=LATER, migration={
        "migrationJob": "chat-migrate-1", "migrated": False,
        "failure": "BackoffLimitExceeded: Job has reached the specified backoff limit"})
    degraded = cond(failed, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "MigrationFailed")
    assert degraded["message"].startswith("storage migration Job chat-migrate-1 failed: "
                                          "BackoffLimitExceeded: Job has reached")
    assert cond(failed, "Ready")["status"] == "False"
    done = status.compute(cluster, obs, failed, now=LATER,
                          migration={"migrationJob": "chat-migrate-2", "migrated": True})
    assert cond(done, "Ready")["status"] == "True"
    assert cond(done, "Degraded")["status"] == "False"


def test_a_region_that_could_not_be_read_is_unknown(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    obs = {r.name: status.RegionObservation({}, error=("ApplyFailed", "503: unavailable"))
           for r in cluster.regions}
    st = status.compute(cluster, obs, now=NOW)
    assert cond(st["regions"][0], "Available")["status"] == "Unknown"
    assert cond(st, "Available")["status"] == "Unknown"
    assert cond(st, "Degraded")["status"] == "True"


def _following(lag: int, ago: float | None) -> dict[str, Any]:
    """A reachable peer whose notices the pod follows (a cluster region on a shared CQL
    keyspace: the one im that follows reports `replication`, regions/notices.py)."""
    from chatplane.regions.notices import FollowedPeer

    peer = FollowedPeer("us", stream="s1", applied_to=40, peer_head=40 + lag, connected=True,
                        last_batch_at=None if ago is None else 1000.0 - ago)
    return {**UP, "replication": peer.view(1000.0)}


def test_a_cql_cluster_region_is_judged_by_its_notice_follower(body: dict[str, Any]) -> None:
    """eu's two im pods: the follower reports the notice lag, the other pod nothing (an
    idle follower would read as stalled); ReplicationReady follows the notice lag."""
    def views(lag: int, ago: float | None) -> dict[str, reachability.RegionPeers | None]:
        return {"eu": reachability.summarize([_report("eu-im-0", us=_following(lag, ago), ap=UP),
                                              _report("eu-im-1", us=UP, ap=UP)]),
                "us": reachability.summarize([_report("us-im-0", eu=_following(0, 0.5),
                                                      ap=UP)])}

    ready = _replication_with(body, views(3, 0.5))
    assert (ready["status"], ready["reason"]) == ("True", "ReplicationInSync")
    lagging = _replication_with(body, views(1500, 0.5))
    assert lagging["message"] == "eu ← us: lag 1500 entries (max 1000) (pod eu-im-0)"
    stalled = _replication_with(body, views(0, 30.0))
    assert (stalled["status"], stalled["reason"]) == ("False", "ReplicationLagging")
    assert "last batch 30.0 s ago" in stalled["message"]
