"""The delivery checker: did every device get every acked message once, in order?

Pure bookkeeping, no I/O, so a bench, an end-to-end test or a chaos run can
feed it and ask for a `Verdict` at the end. It is told three things:

- who is in which conversation (`add_member`) and which devices each user has
  (`add_device`); a device is expected to receive every acked message of every
  conversation its user is a member of, its own sends included (DESIGN §3);
- what each sender got acked (`record_ack`): (conversation, seq, message id),
  and the cid the device numbered the send with, when the feeder knows it;
- what each device received, in arrival order (`record_receipt`).

Per device the verdict counts, over the device's conversations:
- lost: acked messages never received;
- duplicated: a (conversation, seq) received more than once;
- reordered: a receipt whose seq is below one already received;
- gaps: seqs missing between the lowest and the highest received (holes that
  were never filled; an acked hole also counts as lost);
- conflicting: a (conversation, seq) whose message id differs from the acked
  one or from what another device saw there (so the devices' orders differ);
- foreign: receipts of conversations the device's user is not a member of;
- history: problems in pages the device pulled with `history()`
  (`check_history`): seqs not ascending and contiguous (a hole, a repeat),
  or a seq whose message differs from the one acked or received there.
- cid_order (counted on the sending device): acks of one device into one
  conversation whose seqs do not rise with their cids, i.e. the server
  sequenced the device's sends in another order than it numbered them
  (DESIGN §3: uplink order is the device's cid order). Only acks recorded
  with a cid count.
`same_order` holds when no device reordered and no seq maps to two messages:
then every device saw each conversation's messages in the same order.

Seqs are kept as sorted disjoint ranges (`SeqRanges`), which stay tiny for the
contiguous streams a healthy run produces, so a run of millions of messages
costs little memory.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_SAMPLES = 5
SUMMARY_SAMPLES = 5  # named in a failed summary


class SeqRanges:
    """A set of positive ints stored as sorted, disjoint, inclusive ranges."""

    __slots__ = ("_ends", "_starts", "count")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0

    def add(self, seq: int) -> bool:
        """Add `seq`; False if it was already there."""
        starts, ends = self._starts, self._ends
        if ends and seq == ends[-1] + 1:  # the common case: the next one
            ends[-1] = seq
            self.count += 1
            return True
        i = bisect.bisect_right(starts, seq) - 1
        if i >= 0 and seq <= ends[i]:
            return False
        self.count += 1
        joins_left = i >= 0 and ends[i] == seq - 1
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1]
            del ends[i + 1]
        elif joins_left:
            ends[i] = seq
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq)
        return True

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def __len__(self) -> int:
        return self.count

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    @property
    def max(self) -> int:
        return self._ends[-1] if self._ends else 0

    def holes(self) -> int:
        """How many ints are missing between the lowest and the highest."""
        if not self._starts:
            return 0
        return self._ends[-1] - self._starts[0] + 1 - self.count

    def missing_from(self, other: SeqRanges, samples: list[int]) -> int:
        """How many of `other`'s members are not here; fill `samples` (bounded)."""
        missing = 0
        for lo, hi in other.ranges():
            seq = lo
            while seq <= hi:
                i = bisect.bisect_right(self._starts, seq) - 1
                if i >= 0 and seq <= self._ends[i]:
                    seq = self._ends[i] + 1  # skip the covered stretch
                    continue
                nxt = self._starts[i + 1] if i + 1 < len(self._starts) else hi + 1
                stop = min(hi, nxt - 1)
                missing += stop - seq + 1
                while seq <= stop and len(samples) < MAX_SAMPLES:
                    samples.append(seq)
                    seq += 1
                seq = stop + 1
        return missing


@dataclass
class DeviceVerdict:
    user: str
    device: str
    received: int = 0
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    gaps: int = 0
    conflicting: int = 0
    foreign: int = 0
    history: int = 0
    cid_order: int = 0
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.reordered
            or self.gaps
            or self.conflicting
            or self.foreign
            or self.history
            or self.cid_order
        )


KINDS = ("lost", "duplicated", "reordered", "gaps", "conflicting", "foreign", "history",
         "cid_order")


@dataclass
class Verdict:
    devices: list[DeviceVerdict]
    acked: int
    received: int
    same_order: bool
    totals: dict[str, int]
    # conflicts between acks (two message ids acked at one seq), which no device owns
    ack_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.same_order and not any(self.totals.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "acked": self.acked,
            "received": self.received,
            "same_order": self.same_order,
            **self.totals,
            "ack_samples": self.ack_samples,
            "failed_devices": [asdict(d) for d in self.devices if not d.ok],
            "devices": len(self.devices),
        }

    def summary(self) -> str:
        state = "CLEAN" if self.ok else "FAILED"
        kinds = " ".join(f"{k}={self.totals[k]}" for k in KINDS)
        line = (
            f"{state}: acked={self.acked} received={self.received} {kinds} "
            f"same_order={'yes' if self.same_order else 'NO'} devices={len(self.devices)}"
        )
        # what failed, named: a count alone does not say where to look
        samples = self.ack_samples[:SUMMARY_SAMPLES] + [
            f"{d.user}/{d.device}: {s}" for d in self.devices if not d.ok for s in d.samples]
        return "\n  ".join([line, *samples[:SUMMARY_SAMPLES]])

    @classmethod
    def merge(cls, parts: Iterable[Verdict]) -> Verdict:
        """Combine verdicts of disjoint runs (e.g. one per bench process)."""
        devices: list[DeviceVerdict] = []
        acked = received = 0
        same = True
        totals = dict.fromkeys(KINDS, 0)
        ack_samples: list[str] = []
        for part in parts:
            devices.extend(part.devices)
            ack_samples.extend(part.ack_samples[:MAX_SAMPLES - len(ack_samples)])
            acked += part.acked
            received += part.received
            same = same and part.same_order
            for k in KINDS:
                totals[k] += part.totals.get(k, 0)
        return cls(devices, acked, received, same, totals, ack_samples)


class _Stream:
    """What one device received in one conversation."""

    __slots__ = ("last", "seqs")

    def __init__(self) -> None:
        self.seqs = SeqRanges()
        self.last = 0


class DeliveryChecker:
    """Collects acks and receipts; `verdict()` judges them (see module doc)."""

    def __init__(self) -> None:
        self._members: dict[str, set[str]] = defaultdict(set)  # conv -> users
        self._convs: dict[str, set[str]] = defaultdict(set)  # user -> convs
        self._devices: dict[tuple[str, str], DeviceVerdict] = {}
        self._streams: dict[tuple[str, str], dict[str, _Stream]] = {}
        self._acked: dict[str, SeqRanges] = defaultdict(SeqRanges)  # conv -> seqs
        self._ids: dict[str, dict[int, str]] = defaultdict(dict)  # conv -> seq -> id
        self._ack_conflicts = 0
        self._ack_samples: list[str] = []
        self.acks_by_sender: dict[str, int] = defaultdict(int)
        # (sender, device, conversation) -> cid -> seq, for acks recorded with a cid
        self._sent: dict[tuple[str, str, str], dict[int, int]] = defaultdict(dict)

    def add_member(self, conversation_id: str, user: str) -> None:
        self._members[conversation_id].add(user)
        self._convs[user].add(conversation_id)

    def add_device(self, user: str, device: str) -> None:
        key = (user, device)
        if key not in self._devices:
            self._devices[key] = DeviceVerdict(user, device)
            self._streams[key] = {}

    def record_ack(
        self, sender: str, sender_device: str, conversation_id: str, seq: int, message_id: str,
        cid: int = 0,
    ) -> None:
        """The server acked a send: (conversation, seq) now holds `message_id`;
        with `cid`, the device numbered that send `cid` (checked for order)."""
        self.add_member(conversation_id, sender)
        if cid:
            self._sent[(sender, sender_device, conversation_id)][cid] = seq
        self.acks_by_sender[sender] += 1
        ids = self._ids[conversation_id]
        known = ids.setdefault(seq, message_id)
        if known != message_id:
            self._ack_conflicts += 1
            if len(self._ack_samples) < MAX_SAMPLES:
                self._ack_samples.append(f"ack conflict {conversation_id}#{seq}: {message_id}"
                                         f" acked to {sender}/{sender_device} != {known}")
        self._acked[conversation_id].add(seq)

    def record_receipt(self, user: str, device: str, conversation_id: str, seq: int, message_id: str) -> None:
        """Device (user, device) got message `message_id` at (conversation, seq)."""
        self.add_device(user, device)
        dv = self._devices[(user, device)]
        dv.received += 1
        if conversation_id not in self._convs.get(user, ()):
            dv.foreign += 1
            self._sample(dv, f"foreign {conversation_id}#{seq}")
            return
        streams = self._streams[(user, device)]
        stream = streams.get(conversation_id)
        if stream is None:
            stream = streams[conversation_id] = _Stream()
        if not stream.seqs.add(seq):
            dv.duplicated += 1
            self._sample(dv, f"duplicate {conversation_id}#{seq}")
        elif seq < stream.last:
            dv.reordered += 1
            self._sample(dv, f"reordered {conversation_id}#{seq} after #{stream.last}")
        if seq > stream.last:
            stream.last = seq
        known = self._ids[conversation_id].setdefault(seq, message_id)
        if known != message_id:
            dv.conflicting += 1
            self._sample(dv, f"conflict {conversation_id}#{seq}: {message_id} != {known}")

    def check_history(
        self, user: str, device: str, conversation_id: str, page: Iterable[tuple[int, str]]
    ) -> int:
        """Judge one page of `history()` (seq, message id) as pulled by a device;
        returns how many problems it had (also counted in the verdict)."""
        self.add_device(user, device)
        dv = self._devices[(user, device)]
        ids = self._ids.get(conversation_id, {})
        problems = 0
        prev = 0
        for seq, message_id in page:
            if prev and seq != prev + 1:  # a hole, a repeat or a step back
                problems += 1
                self._sample(dv, f"history {conversation_id}: #{seq} after #{prev}")
            known = ids.get(seq)
            if known is not None and known != message_id:
                problems += 1
                self._sample(dv, f"history {conversation_id}#{seq}: {message_id} != {known}")
            prev = max(prev, seq)
        dv.history += problems
        return problems

    @staticmethod
    def _sample(dv: DeviceVerdict, text: str) -> None:
        if len(dv.samples) < MAX_SAMPLES:
            dv.samples.append(text)

    def _cid_order(self) -> int:
        """Count, per sending device and conversation, the acks whose seq is
        below that of an ack with a lower cid; charged to the sending device
        when it is a known device (else only to the totals). Returns the
        count not charged to a device."""
        unowned = 0
        for known in self._devices.values():
            known.cid_order = 0
        for (sender, device, conv), by_cid in self._sent.items():
            dv = self._devices.get((sender, device))
            highest = highest_cid = 0
            for cid in sorted(by_cid):
                seq = by_cid[cid]
                if seq < highest:
                    if dv is None:
                        unowned += 1
                    else:
                        dv.cid_order += 1
                        self._sample(dv, f"cid order {conv}: cid {cid} got #{seq},"
                                         f" below cid {highest_cid}'s #{highest}")
                else:
                    highest, highest_cid = seq, cid
        return unowned

    def verdict(self) -> Verdict:
        totals = dict.fromkeys(KINDS, 0)
        totals["cid_order"] = self._cid_order()  # the devices' own counts add below
        devices: list[DeviceVerdict] = []
        received = 0
        for key, dv in self._devices.items():
            user = key[0]
            streams = self._streams[key]
            dv.expected = dv.lost = dv.gaps = 0
            for conv in sorted(self._convs.get(user, ())):
                acked = self._acked.get(conv)
                stream = streams.get(conv) or _Stream()
                if acked is not None:
                    dv.expected += len(acked)
                    missing: list[int] = []
                    lost = stream.seqs.missing_from(acked, missing)
                    dv.lost += lost
                    for seq in missing if lost else ():
                        self._sample(dv, f"lost {conv}#{seq}")
                dv.gaps += stream.seqs.holes()
            received += dv.received
            for k in KINDS:
                totals[k] += getattr(dv, k)
            devices.append(dv)
        totals["conflicting"] += self._ack_conflicts
        same_order = totals["reordered"] == 0 and totals["conflicting"] == 0
        acked_total = sum(len(r) for r in self._acked.values())
        return Verdict(devices, acked_total, received, same_order, totals,
                       list(self._ack_samples))
