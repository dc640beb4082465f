"""Token signing key rotation without logging anyone out: a pure planner and its Secret.

With `spec.auth.signingKeyId` set, the operator keeps the Secret `C-token-keys`: one key per
id (`key.<kid>`), the order and retirement times in the annotation
`chatplane.dev/token-keys`, and `keys`, the rendered CHATPLANE_TOKEN_KEYS
(`kid:secret,...`, the first signs, all verify) that every pod reads. The key ids in order
are part of the pods' config hash, so every change of the set rolls every pod (the gateways
through the paced drain rollout). Changing `signingKeyId` rotates in three steps, each only
once every pod runs the previous one (`rolled_out`):

1. the new key is added *after* the signing one: it verifies everywhere, signs nowhere;
2. once every pod verifies it, it moves first: it signs; the old key still verifies;
3. once every pod signs with it, the old key's retirement clock starts; after
   `auth.tokenTTLSeconds` (the longest token lifetime) it is dropped: every token it
   signed has expired by then.

So a token is never presented to a pod that cannot verify it. The first key is `k0`, the
generated Secret's signing key (what CHATPLANE_TOKEN_SECRET held), so tokens minted before
the first rotation keep verifying. `plan()` is pure; `ensure()` reads and writes the Secret.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from collections.abc import Callable
from typing import Any

from chatplane_operator import api
from chatplane_operator.applying import Applier
from chatplane_operator.specs import config, naming

STATE = "chatplane.dev/token-keys"
FIRST_KID = "k0"


@dataclasses.dataclass(frozen=True)
class Key:
    kid: str
    retired_at: float | None = None  # since when no pod signs with it (None: not retired)


def plan(keys: tuple[Key, ...], desired: str, rolled_out: bool, now: float,
         overlap_s: float) -> tuple[tuple[Key, ...], str]:
    """The next key list (first signs) and what changed, '' when nothing did.

    `rolled_out`: every pod runs with `keys` as they are."""
    kids = [k.kid for k in keys]
    if desired not in kids:
        return (*keys, Key(desired)), f"added key {desired} (verifies, does not sign yet)"
    if not rolled_out:
        return keys, ""
    if kids[0] != desired:
        rest = tuple(k for k in keys if k.kid != desired)
        return (Key(desired), *rest), f"key {desired} signs; {kids[0]} still verifies"
    out, dropped = [keys[0]], []
    for key in keys[1:]:
        if key.retired_at is None:
            out.append(Key(key.kid, now))  # every pod signs with the new key from now
        elif now - key.retired_at >= overlap_s:
            dropped.append(key.kid)
        else:
            out.append(key)
    if dropped:
        return tuple(out), f"dropped key {', '.join(dropped)}: its tokens have expired"
    return tuple(out), ""


def render(keys: tuple[Key, ...], values: dict[str, str]) -> str:
    """CHATPLANE_TOKEN_KEYS: `kid:secret,...`, the first signs."""
    return ",".join(f"{k.kid}:{values[k.kid]}" for k in keys)


def _load(secret: dict[str, Any] | None) -> tuple[tuple[Key, ...], dict[str, str]]:
    if secret is None:
        return (), {}
    notes = secret["metadata"].get("annotations") or {}
    state = json.loads(notes.get(STATE) or "[]")
    data = secret.get("data") or {}
    values = {k[4:]: base64.b64decode(v).decode() for k, v in data.items()
              if k.startswith("key.")}
    keys = tuple(Key(str(k["kid"]), k.get("retiredAt")) for k in state if k["kid"] in values)
    return keys, values


def build_secret(cluster: api.ChatCluster, keys: tuple[Key, ...],
                 values: dict[str, str]) -> dict[str, Any]:
    state = [{"kid": k.kid, **({"retiredAt": k.retired_at} if k.retired_at is not None
                               else {})} for k in keys]
    meta = naming.metadata(cluster, config.token_keys_secret_name(cluster), None, None,
                           annotations={STATE: json.dumps(state)})
    data = {f"key.{k.kid}": values[k.kid] for k in keys}
    data[config.TOKEN_KEYS_KEY] = render(keys, values)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def _first_value(applier: Applier, cluster: api.ChatCluster) -> str:
    """k0: the generated Secret's signing key (CHATPLANE_TOKEN_SECRET before rotation)."""
    ref = config.token_ref(cluster)
    secret = applier.get("Secret", cluster.namespace, ref.name) or {}
    value = (secret.get("data") or {}).get(ref.key)
    return base64.b64decode(value).decode() if value else secrets.token_urlsafe(48)


def ensure(applier: Applier, cluster: api.ChatCluster, rolled_out: Callable[[api.ChatCluster], bool],
           now: float) -> tuple[tuple[str, ...], str]:
    """Advance the rotation one step if it may; the key ids now (first signs) and what
    changed ('' when nothing did). `rolled_out(cluster)` says whether every pod runs the
    pod template of `cluster` (its `token_kids` as they are)."""
    desired = cluster.auth.signing_key_id
    if not desired:
        return (), ""
    name = config.token_keys_secret_name(cluster)
    existing = applier.get("Secret", cluster.namespace, name)
    keys, values = _load(existing)
    if not keys:
        keys, values = (Key(FIRST_KID),), {FIRST_KID: _first_value(applier, cluster)}
    current = dataclasses.replace(cluster, token_kids=tuple(k.kid for k in keys))
    new, changed = plan(keys, desired, rolled_out(current), now,
                        float(cluster.auth.token_ttl_seconds))
    for key in new:
        values.setdefault(key.kid, secrets.token_urlsafe(48))
    if new != keys or existing is None:
        applier.apply(build_secret(cluster, new, values))
    return tuple(k.kid for k in new), changed
