"""Issue 15's builders, pure: certificates (issued, usable for mutual TLS, renewed at a third
of their lifetime, given a clock), the TLS wiring of the pods, cert-manager Certificates, the
NetworkPolicy per region, the admin port off the public Service, and the token key planner."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from conftest import cluster_body

from chatplane_operator import api, certificates, tokenkeys
from chatplane_operator.specs import bundle, certs, config, netpol, pods, services

# the handshakes below check validity against the real clock: certificates issued a fixed
# day expired the day after (this test failed on 2026-12-07)
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0) - datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


def _handshake(tmp: Path, ca: certificates.Issued, server: certificates.Issued,
               client: certificates.Issued, name: str) -> str:
    """A mutual-TLS handshake in memory; the client certificate's CN the server saw."""
    for label, issued in (("server", server), ("client", client)):
        (tmp / f"{label}.crt").write_bytes(issued.cert)
        (tmp / f"{label}.key").write_bytes(issued.key)
    (tmp / "ca.crt").write_bytes(ca.cert)
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    srv.load_verify_locations(tmp / "ca.crt")
    srv.verify_mode = ssl.CERT_REQUIRED
    cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cli.load_cert_chain(tmp / "client.crt", tmp / "client.key")
    cli.load_verify_locations(tmp / "ca.crt")
    bios = [ssl.MemoryBIO() for _ in range(4)]
    s = srv.wrap_bio(bios[0], bios[1], server_side=True)
    c = cli.wrap_bio(bios[2], bios[3], server_hostname=name)
    for _ in range(10):
        for side in (c, s):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    peer = s.getpeercert()
    assert peer, "no handshake"
    return str(dict(x[0] for x in peer["subject"])["commonName"])


def test_issued_tier_certificates_authenticate_both_ways(tmp_path: Path) -> None:
    cluster = api.parse(cluster_body())
    eu = cluster.regions[0]
    ca = certificates.make_ca("chatplane chat/chat", NOW)
    im = certificates.issue(ca, certs.tier_identity(cluster, eu, "im"), NOW, 90 * DAY)
    gateway = certificates.issue(ca, certs.tier_identity(cluster, eu, "gateway"), NOW, 90 * DAY)
    # a gateway dials im (target name override "im") and is seen as "gateway"
    assert _handshake(tmp_path, ca, im, gateway, "im") == "gateway"
    ident = certificates.identity(im.cert)
    assert ident.common_name == "im"
    assert {"im", "chat-eu-im.chat.svc", "region.eu"} <= set(ident.dns_names)
    other = certificates.make_ca("another cluster", NOW)
    stranger = certificates.issue(other, certs.tier_identity(cluster, eu, "gateway"), NOW, DAY)
    with pytest.raises(ssl.SSLError):
        _handshake(tmp_path, ca, im, stranger, "im")  # another cluster's CA is refused


def test_an_advertised_ip_is_an_ip_san_clients_verify(body: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """advertiseURL wss://10.244.0.1:32598/ws (a NodePort, a load balancer's IP): TLS
    clients match an IP only against IP SANs, so the client certificate carries it as one."""
    body["spec"]["regions"][0]["gateway"] = {"advertiseURL": "wss://10.244.0.1:32598/ws",
                                             "advertiseTCP": "10.244.0.2:32599"}
    cluster = api.parse(body)
    eu = cluster.regions[0]
    wanted = certs.client_identity(cluster, eu)
    assert {"10.244.0.1", "10.244.0.2"} <= set(wanted.dns_names)  # advertiseURL's, -TCP's
    env = {e["name"]: e.get("value") for e in pods.container(cluster, eu, "gateway")["env"]}
    assert env["CHATPLANE_GATEWAY_ADVERTISE_TCP"] == "10.244.0.2:32599"
    ca = certificates.make_ca("ca", NOW)
    issued = certificates.issue(ca, wanted, NOW, DAY)
    client = certificates.issue(ca, certs.tier_identity(cluster, eu, "ipconf"), NOW, DAY)
    _handshake(tmp_path, ca, issued, client, "10.244.0.1")  # the hostname check passes
    assert certificates.why_reissue(issued.cert, ca, wanted, NOW) == ""  # read back as wanted
    body["spec"]["tls"] = {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}
    spec = next(s for s in certs.wanted_certs(api.parse(body)) if s.role == "client")
    certificate = certs.build_certificate(api.parse(body), spec)["spec"]
    assert certificate["ipAddresses"] == ["10.244.0.1", "10.244.0.2"]
    assert "10.244.0.1" not in certificate["dnsNames"]


def test_renewal_is_due_with_a_third_of_the_lifetime_left() -> None:
    cluster = api.parse(cluster_body())
    wanted = certs.tier_identity(cluster, cluster.regions[0], "state")
    ca = certificates.make_ca("ca", NOW)
    cert = certificates.issue(ca, wanted, NOW, 90 * DAY).cert
    assert certificates.why_reissue(cert, ca, wanted, NOW) == ""
    assert certificates.why_reissue(cert, ca, wanted, NOW + 59 * DAY) == ""
    assert certificates.why_reissue(cert, ca, wanted, NOW + 61 * DAY).startswith("due for renewal")
    assert certificates.why_reissue(None, ca, wanted, NOW) == "absent"
    moved = api.Region(**{**cluster.regions[0].__dict__, "name": "ap"})
    assert certificates.why_reissue(cert, ca, certs.tier_identity(cluster, moved, "state"),
                                    NOW) == "identity changed"
    assert certificates.why_reissue(cert, certificates.make_ca("ca", NOW), wanted,
                                    NOW) == "issued by another CA"


def _container(cluster: api.ChatCluster, tier: str) -> dict[str, Any]:
    return pods.container(cluster, cluster.regions[0], tier)


def test_pods_mount_their_certificates_read_only_and_point_the_env_at_them(
    body: dict[str, Any],
) -> None:
    body["spec"]["tls"] = {"redis": {"secretName": "redis-tls"},
                           "cql": {"secretName": "cql-tls", "certKey": "tls.crt",
                                   "keyKey": "tls.key"},
                           "peerCA": {"secretName": "peers-ca"}}
    cluster = api.parse(body)
    api.validate(cluster)
    for tier in api.TIERS:
        c = _container(cluster, tier)
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["CHATPLANE_GRPC_TLS_CA"] == "/etc/chatplane/tls/grpc/ca.crt"
        assert env["CHATPLANE_GRPC_TLS_CERT"] == "/etc/chatplane/tls/grpc/tls.crt"
        assert env["CHATPLANE_GRPC_TLS_KEY"] == "/etc/chatplane/tls/grpc/tls.key"
        assert env["CHATPLANE_REDIS_TLS_CA"] == "/etc/chatplane/tls/redis/ca.crt"
        assert "CHATPLANE_REDIS_TLS_CERT" not in env  # no client certificate given
        assert env["CHATPLANE_CQL_TLS_CERT"] == "/etc/chatplane/tls/cql/tls.crt"
        assert ("CHATPLANE_PEER_TLS_CA" in env) == (tier == "im")
        assert ("CHATPLANE_TLS_CERT" in env) == (tier == "gateway")
        mounts = [m for m in c["volumeMounts"] if m["mountPath"].startswith("/etc/chatplane")]
        assert mounts and all(m["readOnly"] for m in mounts)
    template = pods.pod_template(cluster, cluster.regions[0], "im")
    secrets = {v["secret"]["secretName"] for v in template["spec"]["volumes"] if "secret" in v}
    assert secrets == {"chat-eu-im-tls", "peers-ca", "redis-tls", "cql-tls"}
    gateway = _container(cluster, "gateway")
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    refs = config.user_secret_refs(cluster, cluster.regions[0])
    assert api.SecretKeyRef("cql-tls", "tls.key") in refs  # checked before applying
    assert api.SecretKeyRef("peers-ca", "ca.crt") in refs


def test_tls_off_mounts_nothing(body: dict[str, Any]) -> None:
    body["spec"]["tls"] = {"enabled": False}
    cluster = api.parse(body)
    assert certs.wanted_certs(cluster) == []
    c = _container(cluster, "gateway")
    assert not [e for e in c["env"] if "TLS" in e["name"]]
    assert "scheme" not in c["readinessProbe"]["httpGet"]


def test_a_named_client_secret_replaces_the_issued_client_certificate(
    body: dict[str, Any],
) -> None:
    body["spec"]["tls"] = {"clientSecretName": "public-tls"}
    cluster = api.parse(body)
    assert all(s.role != "client" for s in certs.wanted_certs(cluster))
    template = pods.pod_template(cluster, cluster.regions[0], "gateway")
    assert {"name": "tls-client", "secret": {"secretName": "public-tls", "defaultMode": 0o440}} \
        in template["spec"]["volumes"]


def test_cert_manager_certificates_replace_the_operators_ca(body: dict[str, Any]) -> None:
    body["spec"]["tls"] = {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
                           "certificateLifetimeHours": 720}
    cluster = api.parse(body)
    api.validate(cluster)
    region = bundle.build_region(cluster, cluster.regions[0])
    made = [m for m in region if m["kind"] == "Certificate"]
    # the four tiers, the client-facing one, and (first region) the operator's
    assert sorted(m["spec"]["secretName"] for m in made) == sorted([
        "chat-eu-gateway-tls", "chat-eu-state-tls", "chat-eu-im-tls", "chat-eu-ipconf-tls",
        "chat-eu-gateway-client-tls", "chat-operator-tls"])
    im = next(m for m in made if m["spec"]["secretName"] == "chat-eu-im-tls")
    assert im["apiVersion"] == "cert-manager.io/v1"
    assert im["spec"]["commonName"] == "im" and "region.eu" in im["spec"]["dnsNames"]
    assert im["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer",
                                       "group": "cert-manager.io"}
    assert (im["spec"]["duration"], im["spec"]["renewBefore"]) == ("720h", "240h")
    assert {"server auth", "client auth"} <= set(im["spec"]["usages"])
    assert im["metadata"]["ownerReferences"][0]["kind"] == "ChatCluster"
    us = bundle.build_region(cluster, cluster.regions[1])
    assert "chat-operator-tls" not in {m["spec"]["secretName"] for m in us
                                       if m["kind"] == "Certificate"}
    # the pods mount the Secrets cert-manager writes, under the same names
    volumes = pods.pod_template(cluster, cluster.regions[0], "im")["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == "chat-eu-im-tls" for v in volumes)
    assert bundle.applied_kinds(cluster) == bundle.APPLIED_KINDS
    assert "Certificate" not in bundle.applied_kinds(api.parse(cluster_body()))


@pytest.mark.parametrize("version", ("1.29", "1.33"))
def test_the_network_policy_opens_client_ports_only(body: dict[str, Any], version: str) -> None:
    body["spec"]["peers"] = [{"name": "ap", "endpoint": "im.ap:9090",
                              "cidrs": ["10.8.0.0/16", "fd00:8::/64"]}]
    body["spec"]["auth"] = {"tokenSecretRef": {"name": "shared"}}
    cluster = api.parse(body)
    api.validate(cluster)
    policy = netpol.build_network_policy(cluster, cluster.regions[0])
    kubernetes_validate.validate(policy, version, strict=True)
    assert policy["spec"]["podSelector"]["matchLabels"]["chatplane.dev/region"] == "eu"
    open_, internal, peers = policy["spec"]["ingress"]
    assert "from" not in open_ and [p["port"] for p in open_["ports"]] == [8080, 8081]
    assert [p["port"] for p in internal["ports"]] == [9090, 9091]
    own, operator = internal["from"]
    assert own == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "chatplane",
                                                   "app.kubernetes.io/instance": "chat"}}}
    assert operator["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "chatplane-system"}
    assert peers == {"from": [{"ipBlock": {"cidr": "10.8.0.0/16"}},
                              {"ipBlock": {"cidr": "fd00:8::/64"}}],
                     "ports": [{"protocol": "TCP", "port": 9090}]}
    body["spec"]["networkPolicy"] = {"metricsNamespaces": ["monitoring"]}
    scraped = api.parse(body)
    scrape = netpol.build_network_policy(scraped, scraped.regions[0])["spec"]["ingress"][2]
    assert scrape == {"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": 9091}]}
    body["spec"]["networkPolicy"] = {"enabled": False}
    off = api.parse(body)
    assert not [m for m in bundle.build_region(off, off.regions[0])
                if m["kind"] == "NetworkPolicy"]


def test_the_admin_port_is_declared_but_never_public(body: dict[str, Any]) -> None:
    cluster = api.parse(body)
    eu = cluster.regions[0]
    public = services.build_gateway_public_service(cluster, eu)
    assert [p["name"] for p in public["spec"]["ports"]] == ["http", "tcp"]
    ipconf = services.build_tier_service(cluster, eu, "ipconf")
    assert [p["name"] for p in ipconf["spec"]["ports"]] == ["http"]
    for tier in api.TIERS:
        ports = {p["name"]: p["containerPort"] for p in _container(cluster, tier)["ports"]}
        assert ports["admin"] == 9091
    assert config.config_data(cluster, eu)["CHATPLANE_ADMIN_PORT"] == "9091"
    template = pods.pod_template(cluster, eu, "state")
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9091"


def test_token_keys_rotate_in_three_steps_and_nobody_is_logged_out() -> None:
    k0 = (tokenkeys.Key("k0"),)
    keys, what = tokenkeys.plan(k0, "k1", rolled_out=False, now=0, overlap_s=100)
    assert [k.kid for k in keys] == ["k0", "k1"] and "verifies" in what  # k0 still signs
    assert tokenkeys.plan(keys, "k1", rolled_out=False, now=1, overlap_s=100) == (keys, "")
    keys, what = tokenkeys.plan(keys, "k1", rolled_out=True, now=2, overlap_s=100)
    assert [k.kid for k in keys] == ["k1", "k0"] and "k1 signs" in what
    keys, what = tokenkeys.plan(keys, "k1", rolled_out=False, now=3, overlap_s=100)
    assert keys[1].retired_at is None  # not every pod signs with k1 yet
    keys, what = tokenkeys.plan(keys, "k1", rolled_out=True, now=10, overlap_s=100)
    assert keys[1] == tokenkeys.Key("k0", 10) and what == ""
    assert tokenkeys.plan(keys, "k1", rolled_out=True, now=109, overlap_s=100)[0] == keys
    keys, what = tokenkeys.plan(keys, "k1", rolled_out=True, now=110, overlap_s=100)
    assert keys == (tokenkeys.Key("k1"),) and "dropped key k0" in what
    assert tokenkeys.render((tokenkeys.Key("k1"), tokenkeys.Key("k0")),
                            {"k0": "a", "k1": "b"}) == "k1:b,k0:a"


def test_the_key_ids_roll_the_pods(body: dict[str, Any]) -> None:
    body["spec"]["auth"] = {"signingKeyId": "k1"}
    cluster = api.parse(body)
    eu = cluster.regions[0]
    env = {e["name"]: e for e in _container(cluster, "gateway")["env"]}
    assert env["CHATPLANE_TOKEN_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "chat-token-keys", "key": "keys"}
    added = api.ChatCluster(**{**cluster.__dict__, "token_kids": ("k0", "k1")})
    swapped = api.ChatCluster(**{**cluster.__dict__, "token_kids": ("k1", "k0")})
    assert config.config_hash(added, eu) != config.config_hash(swapped, eu)
    assert all(r.name != "chat-token-keys" for r in config.user_secret_refs(cluster, eu))


def test_the_migration_job_dials_cql_over_tls_too(body: dict[str, Any]) -> None:
    from chatplane_operator.specs import jobs

    body["spec"]["tls"] = {"cql": {"secretName": "scylla-ca"}, "redis": {"secretName": "r"}}
    job = jobs.build_migrate_job(api.parse(body))
    kubernetes_validate.validate(job, "1.33", strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {"CHATPLANE_CQL_TLS_CA": "/etc/chatplane/tls/cql/ca.crt"}  # not Redis
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls-cql", "secret": {"secretName": "scylla-ca", "defaultMode": 0o440}} \
        in volumes
