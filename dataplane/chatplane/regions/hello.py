"""The rules of a peer `Hello`, without I/O: the challenge a probe sends, the proof a
region answers with, and what a reply says about the peer (right region, same peer
protocol, same token key). The link (`regions.links`) only moves these over gRPC."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

PROTOCOL = 1  # the peer protocol version this build speaks
NONCE_BYTES = 16

Prover = Callable[[bytes], bytes]  # TokenSigner.peer_proof


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def challenge(nonce: bytes, answering_region: str) -> bytes:
    """What the answering region proves: the caller's nonce bound to the answerer's name,
    so a proof cannot be passed off as another region's."""
    return nonce + b"|" + answering_region.encode()


def key_proof(prove: Prover, nonce: bytes, answering_region: str) -> bytes:
    return prove(challenge(nonce, answering_region))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one answered Hello says about a peer."""

    key_match: bool
    problems: tuple[str, ...]  # empty: the peer is the region we expect and is compatible

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(prove: Prover, expected_region: str, nonce: bytes, region: str, protocol: int,
          proof: bytes) -> Verdict:
    """Compare a reply with what we expect of the peer `expected_region`."""
    problems = []
    if region != expected_region:
        problems.append(f"answers as region {region!r}, not {expected_region!r}")
    if protocol != PROTOCOL:
        problems.append(f"speaks peer protocol {protocol}, this region {PROTOCOL}")
    key_match = hmac.compare_digest(proof, key_proof(prove, nonce, region))
    if not key_match:
        problems.append("signs tokens with a different key")
    return Verdict(key_match, tuple(problems))
