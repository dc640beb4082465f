"""The peer list: `CHATPLANE_PEERS`, a JSON list of `{name, endpoint, datacenter, ws, tcp}`
(the format the operator writes, `chatplane_operator.specs.config.peers`; `ws` and `tcp`,
the peer region's public gateway addresses, are optional: dispatch offers them to clients
after this region's own gateways, docs/architecture.md "Failover"). Pure: parsing and
its one-line errors, nothing else."""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass

IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,62})$")
MAX_PEERS = 16  # regions of one deployment, not a fleet: a longer list is a mistake
MAX_URL = 512  # a public gateway address clients are sent to
TLS_TCP = "tcps://"  # client/links.py's prefix of a TLS TCP gateway


class PeerListError(ValueError):
    """A bad peer list; the message names the entry and what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Peer:
    name: str  # the peer region's name (what it answers as in Hello)
    # host:port of its cross-region gRPC endpoint (its im tier), or several IPv4
    # host:port joined by commas (each im of a cluster region: calls go to a live one)
    endpoint: str
    datacenter: str = ""
    ws: str = ""  # its public WebSocket gateway URL (ws:// or wss://), "" when not given
    tcp: str = ""  # its public TCP gateway (host:port, tcps://host:port for TLS), or ""

    @property
    def gateway(self) -> dict[str, str] | None:
        """The peer's public gateway as a dispatch endpoint (None: none given)."""
        if not self.ws and not self.tcp:
            return None
        return {"gateway_id": f"region:{self.name}", "ws": self.ws, "tcp": self.tcp,
                "region": self.name}


def _endpoint(text: str, where: str, several: bool = False) -> str:
    if several and "," in text:  # a cluster's ims, each serving the link (rpc/peers.py)
        for one in text.split(","):
            host = one.rpartition(":")[0]
            if not IPV4.match(host):
                raise PeerListError(f"{where}: endpoint {text!r}: a list of addresses takes"
                                    f" IPv4 host:port entries only, not {one!r}")
            _endpoint(one, where)
        return text
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
    return Peer(name, _endpoint(endpoint, f"{where} ({name})", several=True), datacenter,
                _ws(item.get("ws", ""), f"{where} ({name})"),
                _tcp(item.get("tcp", ""), f"{where} ({name})"))


def _ws(value: object, where: str) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise PeerListError(f"{where}: ws must be a URL of at most {MAX_URL} characters")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise PeerListError(f"{where}: ws {value!r} is not a ws:// or wss:// URL")
    return value


def _tcp(value: object, where: str) -> str:
    if value == "":
        return ""
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise PeerListError(f"{where}: tcp must be host:port of at most {MAX_URL} characters")
    try:
        _endpoint(value.removeprefix(TLS_TCP), where)
    except PeerListError:
        raise PeerListError(f"{where}: tcp {value!r} is not host:port") from None
    return value


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
    if len(items) > MAX_PEERS:
        raise PeerListError(f"{len(items)} peers listed, at most {MAX_PEERS}")
    peers = [_entry(item, i) for i, item in enumerate(items)]
    seen: set[str] = set()
    for peer in peers:
        if peer.name in seen:
            raise PeerListError(f"{peer.name!r} is listed twice")
        if peer.name == own_region:
            raise PeerListError(f"{peer.name!r} is this region itself")
        seen.add(peer.name)
    return peers
