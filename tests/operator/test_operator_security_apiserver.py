"""Certificates, the NetworkPolicy and token key rotation, on the real kube-apiserver with the
operator process unchanged (as the chart's ServiceAccount, with the chart's RBAC).

- The CA Secret is created once and never rewritten; every tier's certificate Secret is
  issued from it (CN = role, SANs per the contract), and a pass that finds them fresh
  writes nothing.
- A certificate due for renewal (here: one the test wrote, issued 80 days ago for 90) or
  deleted is issued again on the next pass, from the same CA.
- `auth.signingKeyId` rotates the token keys in steps, each once every pod runs the
  previous one (the test plays the controllers: workloads ready and updated); the retired
  key is dropped once its overlap is over (the test moves its retirement time back
  instead of waiting the hour).
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from conftest import OperatorProcess, mark_workloads_ready, wait_until
from kube_children import cluster_status, migrated_tiers, wait_reconciled
from kube_client import Kube

from chatplane_operator import certificates, tokenkeys

pytestmark = pytest.mark.kube

TIER_SECRETS = [f"chat-eu-{t}-tls" for t in ("ipconf", "gateway", "state", "im")]
ALL_SECRETS = [*TIER_SECRETS, "chat-eu-gateway-client-tls", "chat-operator-tls"]


def _pem(kube: Kube, namespace: str, name: str, key: str = "tls.crt") -> bytes:
    secret = kube.get("Secret", namespace, name) or {}
    return base64.b64decode((secret.get("data") or {}).get(key, ""))


def _ca(kube: Kube, namespace: str) -> certificates.Issued:
    return certificates.Issued(_pem(kube, namespace, "chat-ca"),
                               _pem(kube, namespace, "chat-ca", "tls.key"))


def _poke(kube: Kube, namespace: str, n: int) -> None:
    """A change the operator watches (Secrets are not watched): a pass follows."""
    kube.merge_patch("StatefulSet", namespace, "chat-eu-gateway",
                     {"status": {"collisionCount": n}}, sub="status")


def _fresh(kube: Kube, namespace: str, name: str) -> bool:
    ca = _ca(kube, namespace)
    cert = _pem(kube, namespace, name)
    if not cert:
        return False
    wanted = certificates.identity(cert)
    return certificates.why_reissue(cert, ca, wanted, datetime.datetime.now(datetime.UTC)) == ""


def test_a_ca_per_cluster_issues_every_tier_certificate_and_renews_them(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
) -> None:
    make_cluster(("eu",))
    wait_reconciled(kube, namespace, 1)
    wait_until(lambda: all(kube.get("Secret", namespace, n) for n in ALL_SECRETS), 45,
               "every certificate Secret")
    ca_secret = kube.get("Secret", namespace, "chat-ca")
    assert ca_secret["type"] == "kubernetes.io/tls"
    ca = _ca(kube, namespace)
    for name in ALL_SECRETS:
        secret = kube.get("Secret", namespace, name)
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["ownerReferences"][0]["kind"] == "ChatCluster"
        assert _pem(kube, namespace, name, "ca.crt") == ca.cert
        assert _fresh(kube, namespace, name), name
    im = certificates.identity(_pem(kube, namespace, "chat-eu-im-tls"))
    assert im.common_name == "im"
    assert {"im", f"chat-eu-im.{namespace}.svc", "region.eu"} <= set(im.dns_names)
    assert certificates.identity(_pem(kube, namespace, "chat-operator-tls")).common_name \
        == "operator"
    shown = wait_until(lambda: cluster_status(kube, namespace).get("certificates"), 45,
                       "status.certificates")
    renew = datetime.datetime.fromisoformat(shown["renewAt"].replace("Z", "+00:00"))
    expires = datetime.datetime.fromisoformat(shown["notAfter"].replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.UTC)
    assert abs((expires - now) - datetime.timedelta(days=90)) < datetime.timedelta(hours=1)
    assert abs((renew - now) - datetime.timedelta(days=60)) < datetime.timedelta(hours=1)
    policy = kube.get("NetworkPolicy", namespace, "chat-eu-ingress")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    versions = {n: kube.get("Secret", namespace, n)["metadata"]["resourceVersion"]
                for n in ["chat-ca", *ALL_SECRETS]}

    # a pass over fresh certificates writes nothing
    _poke(kube, namespace, 1)
    wait_until(lambda: (operator.log().count("reconciled") >= 3), 45, "another pass")
    assert {n: kube.get("Secret", namespace, n)["metadata"]["resourceVersion"]
            for n in versions} == versions

    # one due for renewal, one deleted: both issued again, from the same CA
    now = datetime.datetime.now(datetime.UTC)
    old = certificates.issue(ca, certificates.identity(_pem(kube, namespace, "chat-eu-im-tls")),
                             now - datetime.timedelta(days=80), datetime.timedelta(days=90))
    kube.merge_patch("Secret", namespace, "chat-eu-im-tls", {"data": {
        "tls.crt": base64.b64encode(old.cert).decode(),
        "tls.key": base64.b64encode(old.key).decode()}})
    assert not _fresh(kube, namespace, "chat-eu-im-tls")
    kube.delete("Secret", namespace, "chat-eu-state-tls")
    _poke(kube, namespace, 2)
    wait_until(lambda: _fresh(kube, namespace, "chat-eu-im-tls")
               and _fresh(kube, namespace, "chat-eu-state-tls"), 45, "renewed certificates")
    assert kube.get("Secret", namespace, "chat-ca")["metadata"]["resourceVersion"] \
        == versions["chat-ca"]  # the CA is never rewritten
    events = [e["message"] for e in kube.list("Event", namespace)
              if e.get("reason") == "CertificateIssued"]
    assert any("chat-eu-im-tls (due for renewal" in m for m in events), events
    assert any("chat-eu-state-tls (absent)" in m for m in events), events


def _keys(kube: Kube, namespace: str) -> tuple[list[str], str]:
    secret = kube.get("Secret", namespace, "chat-token-keys") or {"metadata": {}}
    state = json.loads((secret["metadata"].get("annotations") or {}).get(tokenkeys.STATE, "[]"))
    rendered = base64.b64decode((secret.get("data") or {}).get("keys", "")).decode()
    return [k["kid"] for k in state], rendered


def _hash(kube: Kube, namespace: str) -> str:
    sts = kube.get("StatefulSet", namespace, "chat-eu-gateway")
    return str(sts["spec"]["template"]["metadata"]["annotations"]["chatplane.dev/config-hash"])


def test_token_key_rotation_adds_then_signs_then_drops(
    kube: Kube, namespace: str, operator: OperatorProcess, make_cluster: Any,
) -> None:
    make_cluster(("eu",), mutate=lambda o: o["spec"].update(
        {"auth": {"signingKeyId": "k1", "tokenTTLSeconds": 3600}}))
    wait_reconciled(kube, namespace, 1)
    migrated_tiers(kube, namespace, ("eu",))  # the pods roll only once it has run
    kids, rendered = wait_until(lambda: _keys(kube, namespace)[0] and _keys(kube, namespace),
                                20, "the token key Secret")
    assert kids == ["k0", "k1"]  # k1 verifies everywhere first; k0 still signs
    generated = base64.b64decode(kube.get("Secret", namespace, "chat-generated")["data"]["token"])
    assert rendered.startswith(f"k0:{generated.decode()},k1:")  # k0: the key tokens had
    sts = kube.get("StatefulSet", namespace, "chat-eu-gateway")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CHATPLANE_TOKEN_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "chat-token-keys", "key": "keys"}
    first = _hash(kube, namespace)

    _poke(kube, namespace, 1)  # pods not rolled yet: nothing moves
    wait_until(lambda: operator.log().count("reconciled") >= 3, 45, "another pass")
    assert _keys(kube, namespace)[0] == ["k0", "k1"]

    mark_workloads_ready(kube, namespace, ("eu",))  # every pod verifies k1 now
    wait_until(lambda: _keys(kube, namespace)[0] == ["k1", "k0"], 45, "k1 signs")
    wait_until(lambda: _hash(kube, namespace) != first, 45, "the pods roll to the new order")

    mark_workloads_ready(kube, namespace, ("eu",))  # every pod signs with k1

    def retired() -> bool:
        notes = kube.get("Secret", namespace, "chat-token-keys")["metadata"]["annotations"]
        return any(k.get("retiredAt") for k in json.loads(notes[tokenkeys.STATE]))
    wait_until(retired, 45, "k0's retirement clock started")
    assert _keys(kube, namespace)[0] == ["k1", "k0"]  # k0 verifies for the token TTL

    secret = kube.get("Secret", namespace, "chat-token-keys")
    state = json.loads(secret["metadata"]["annotations"][tokenkeys.STATE])
    state[1]["retiredAt"] -= 3600  # an hour later
    kube.merge_patch("Secret", namespace, "chat-token-keys", {"metadata": {"annotations": {
        tokenkeys.STATE: json.dumps(state)}}})
    _poke(kube, namespace, 2)
    wait_until(lambda: _keys(kube, namespace)[0] == ["k1"], 45, "k0 dropped")
    kids, rendered = _keys(kube, namespace)
    assert rendered.startswith("k1:") and "," not in rendered
    events = [e["message"] for e in kube.list("Event", namespace)
              if e.get("reason") == "TokenKeysRotated"]
    assert sorted(events) == ["added key k1 (verifies, does not sign yet)",
                              "dropped key k0: its tokens have expired",
                              "key k1 signs; k0 still verifies"], events
