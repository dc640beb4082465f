"""The pure parts of the cross-region link: the peer list format the operator writes, and
what a Hello reply says about a peer (no sockets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatplane import peerlist
from chatplane.auth import TokenSigner
from chatplane.ipconf.dispatch import fallbacks_of
from chatplane.regions import hello
from chatplane.settings import SettingsError, load


def test_the_operators_peer_list_parses() -> None:
    text = json.dumps([{"datacenter": "us-east", "endpoint": "chat-us-im.chat.svc:9090",
                        "name": "us"},
                       {"datacenter": "ap-south", "endpoint": "im.ap.example:9090",
                        "name": "ap"}], sort_keys=True)
    assert peerlist.parse(text, "eu") == [
        peerlist.Peer("us", "chat-us-im.chat.svc:9090", "us-east"),
        peerlist.Peer("ap", "im.ap.example:9090", "ap-south")]
    assert peerlist.parse("", "eu") == [] and peerlist.parse("[]", "eu") == []


def test_a_cluster_regions_endpoint_lists_its_ims() -> None:
    """A peer that is a cluster (docs/cluster.md, "Regions"): one IPv4 address per im."""
    text = json.dumps([{"name": "us", "endpoint": "127.0.0.1:7200,127.0.0.1:7201"}])
    assert peerlist.parse(text, "eu") == [peerlist.Peer("us", "127.0.0.1:7200,127.0.0.1:7201")]


@pytest.mark.parametrize("text, says", [
    ('[{"name": "us", "endpoint": "im-1.us:1,im-2.us:1"}]',
     "a list of addresses takes IPv4 host:port entries only, not 'im-1.us:1'"),
    ('[{"name": "us", "endpoint": "127.0.0.1:1,127.0.0.1:0"}]',
     "endpoint '127.0.0.1:0' is not host:port"),
    ('[{"name": "us", "endpoint": "h:0"}]', "endpoint 'h:0' is not host:port"),
    ('[{"name": "us"}]', "entry 0 (us): endpoint missing"),
    ('[{"endpoint": "h:1"}]', "entry 0: name None is not a region name"),
    ('[{"name": "us", "endpoint": "h:1"}, {"name": "us", "endpoint": "h:2"}]',
     "'us' is listed twice"),
    ('["h:1"]', "entry 0: expected an object"),
    ('[{"name": "us", "endpoint": "h:1", "ws": "https://us/ws"}]',
     "entry 0 (us): ws 'https://us/ws' is not a ws:// or wss:// URL"),
    ('[{"name": "us", "endpoint": "h:1", "tcp": "us"}]', "entry 0 (us): tcp 'us' is not host:port"),
    ('[{"name": "us", "endpoint": "h:1", "ws": "wss://' + "x" * 600 + '"}]',
     "ws must be a URL of at most 512 characters"),
    (json.dumps([{"name": f"r{i}", "endpoint": "h:1"} for i in range(17)]),
     "17 peers listed, at most 16"),
])
def test_bad_peer_lists_name_the_entry(text: str, says: str) -> None:
    with pytest.raises(peerlist.PeerListError) as exc:
        peerlist.parse(text, "eu")
    assert says in str(exc.value)


def test_peers_public_gateways_follow_ours_in_dispatch() -> None:
    """Failover: the peer list's `ws`/`tcp` are what dispatch offers after this
    region's own gateways (ipconf/dispatch.py); a peer without them offers none."""
    text = json.dumps([{"name": "us", "endpoint": "im.us:9090", "ws": "wss://chat.us/ws",
                        "tcp": "tcps://chat.us:9443"},
                       {"name": "ap", "endpoint": "im.ap:9090"}])
    assert fallbacks_of(text, "eu") == [{"gateway_id": "region:us", "ws": "wss://chat.us/ws",
                                         "tcp": "tcps://chat.us:9443", "region": "us"}]


def test_a_hello_proves_the_key_without_sending_it() -> None:
    ours, same, other = (TokenSigner("k" * 32), TokenSigner("k" * 32), TokenSigner("x" * 32))
    nonce = hello.new_nonce()
    proof = hello.key_proof(same.peer_proof, nonce, "us")
    assert b"k" * 16 not in proof
    assert hello.judge(ours.peer_proof, "us", nonce, "us", hello.PROTOCOL, proof).ok
    # a proof for another nonce or another region does not pass
    stale = hello.key_proof(same.peer_proof, hello.new_nonce(), "us")
    assert not hello.judge(ours.peer_proof, "us", nonce, "us", hello.PROTOCOL, stale).key_match
    bad = hello.judge(ours.peer_proof, "us", nonce, "us", hello.PROTOCOL,
                      hello.key_proof(other.peer_proof, nonce, "us"))
    assert bad.problems == ("signs tokens with a different key",)


def test_a_hello_from_the_wrong_region_or_protocol_is_not_ok() -> None:
    signer = TokenSigner("k" * 32)
    nonce = hello.new_nonce()
    verdict = hello.judge(signer.peer_proof, "us", nonce, "ap", hello.PROTOCOL + 1,
                          hello.key_proof(signer.peer_proof, nonce, "ap"))
    assert verdict.key_match and not verdict.ok
    assert verdict.problems == ("answers as region 'ap', not 'us'",
                                f"speaks peer protocol {hello.PROTOCOL + 1}, this region "
                                f"{hello.PROTOCOL}")



@pytest.mark.parametrize(("environ", "says"), [
    ({"CHATPLANE_REGION_DURABILITY": "quorum"},
     "CHATPLANE_REGION_DURABILITY must be sync or async, not 'quorum'"),
    ({"CHATPLANE_REGION_SYNC_TIMEOUT_S": "0"}, "CHATPLANE_REGION_SYNC_TIMEOUT_S must be in"),
    # failover must not fire before a probe could have failed: above probe + timeout
    ({"CHATPLANE_FAILOVER_AFTER_S": "2.5"}, "CHATPLANE_FAILOVER_AFTER_S must be 0 (off) or"
     " above peer_probe_s + peer_timeout_s and at most 3600, not 2.5"),
    ({"CHATPLANE_PEERS": '[{"name": "us", "endpoint": "h:1", "ws": "http://us/ws"}]'},
     "CHATPLANE_PEERS: entry 0 (us): ws 'http://us/ws' is not a ws:// or wss:// URL"),
    ({"CHATPLANE_FAILOVER_WITNESS": "witness.example.com"},
     "CHATPLANE_FAILOVER_WITNESS must be host:port, not 'witness.example.com'"),
    ({"CHATPLANE_FAILOVER_WITNESS": "w:99999"},
     "CHATPLANE_FAILOVER_WITNESS must be host:port, not 'w:99999'"),
])
def test_a_bad_durability_mode_stops_the_start_with_one_line(
    tmp_path: Path, environ: dict[str, str], says: str,
) -> None:
    assert load(environ={}).links.region_durability == "sync"  # the default
    with pytest.raises(SettingsError) as err:
        load(environ=environ)
    assert says in str(err.value)
    result = subprocess.run(
        [sys.executable, "-m", "chatplane.cli", "up", "--data-dir", str(tmp_path)],
        env={**environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
