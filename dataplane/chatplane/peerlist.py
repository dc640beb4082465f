"""The peer list: `CHATPLANE_PEERS`, a JSON list of `{name, endpoint, datacenter}` (the
format the operator writes, `chatplane_operator.specs.config.peers`). Pure: parsing and
its one-line errors, nothing else."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,62})$")


class PeerListError(ValueError):
    """A bad peer list; the message names the entry and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str  # the peer region's name (what it answers as in Hello)
    endpoint: str  # host:port of its cross-region gRPC endpoint (its im tier)
    datacenter: str = ""


def _endpoint(text: str, where: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerListError(f"{where}: endpoint {text!r} is not host:port")
    return text


def _entry(item: object, index: int) -> Peer:
    where = f"entry {index}"
    if not isinstance(item, dict):
        raise PeerListError(f"{where}: expected an object {{name, endpoint, datacenter}}")
    name, endpoint = item.get("name"), item.get("endpoint")
    if not isinstance(name, str) or not NAME.match(name):
        raise PeerListError(f"{where}: name {name!r} is not a region name")
    if not isinstance(endpoint, str):
        raise PeerListError(f"{where} ({name}): endpoint missing")
    datacenter = item.get("datacenter", "")
    if not isinstance(datacenter, str):
        raise PeerListError(f"{where} ({name}): datacenter must be a string")
    return Peer(name, _endpoint(endpoint, f"{where} ({name})"), datacenter)


def parse(text: str, own_region: str = "") -> list[Peer]:
    """The peers in `text` (empty: none). Raises PeerListError with one clear line."""
    if not text.strip():
        return []
    try:
        items = json.loads(text)
    except ValueError as exc:
        raise PeerListError(f"not JSON ({exc.args[0]})") from None
    if not isinstance(items, list):
        raise PeerListError("expected a JSON list of {name, endpoint, datacenter}")
    peers = [_entry(item, i) for i, item in enumerate(items)]
    seen: set[str] = set()
    for peer in peers:
        if peer.name in seen:
            raise PeerListError(f"{peer.name!r} is listed twice")
        if peer.name == own_region:
            raise PeerListError(f"{peer.name!r} is this region itself")
        seen.add(peer.name)
    return peers
