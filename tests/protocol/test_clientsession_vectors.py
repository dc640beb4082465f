"""The Python client core against the shared session vectors
(tests/vectors/session.json): frames in, frames and events out, step by step.
The JS core (clients/js/src/core.ts) runs the same file
(clients/js/test/vectors.test.mjs), so both number their frames, batch their
acks, pace their sends and decide resume or resync the same way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from chatplane.protocol import clientsession as core
from chatplane.v1 import frames_pb2 as pb

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
CASES: list[dict[str, Any]] = json.loads((VECTORS / "session.json").read_text())["cases"]


def matches(expected: Any, actual: Any) -> bool:
    """`expected` is a subset of `actual`; scalars compare as text (uint64 is a
    string in protobuf's JSON)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, bool):
        return actual is expected
    return str(expected) == str(actual)


def describe(event: core.Event, cids: list[int]) -> str:
    if isinstance(event, core.LoggedIn):
        return "logged_in:reset" if event.store_reset else "logged_in"
    if isinstance(event, core.SyncNeeded):
        return "sync"
    if isinstance(event, core.PullNeeded):
        return "pull"
    if isinstance(event, core.Delivered):
        return "delivered:" + ",".join(str(m.seq) for m in event.messages)
    if isinstance(event, core.Reply):
        error = event.error
        if error is None:
            return f"reply:{event.request_id}"
        return f"reply:{event.request_id}:error:{error.code}:{str(error.retriable).lower()}"
    if isinstance(event, core.SendDone):
        index = cids.index(event.cid)
        if event.error is not None:
            return f"send_done:{index}:error:{event.error.code}"
        assert event.ack is not None
        return f"send_done:{index}:ack:{event.ack.seq}"
    assert isinstance(event, core.Ended)
    return f"ended:{event.error.code}" if event.error is not None else "ended"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_session_vector(case: dict[str, Any]) -> None:
    session = core.ClientSession(inbox_seq=case["have"], rand=lambda: 0.5)
    session.store_id = case["store"]
    cids: list[int] = []
    for step in case["steps"]:
        op, now = step["op"], float(step["now"])
        if op == "login":
            session.login("tok", now)
        elif op == "in":
            session.receive(json_format.ParseDict(step["frame"], pb.Frame()).SerializeToString(),
                            now)
        elif op == "send":
            cids.append(session.send("d:a:b", step["text"], now))
        elif op == "request":
            session.request(json_format.ParseDict(step["frame"], pb.Frame()))
        elif op == "tick":
            session.tick(now)
        else:
            assert op == "lost"
            assert session.connection_lost(now) == pytest.approx(step["delay"]), step
        out = [json_format.MessageToDict(pb.Frame.FromString(d), preserving_proto_field_name=True)
               for d in session.data_to_send()]
        assert len(out) == len(step["out"]) and all(
            matches(e, a) for e, a in zip(step["out"], out, strict=True)), (step, out)
        assert [describe(e, cids) for e in session.events_received()] == step["events"], step
