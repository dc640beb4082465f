"""The Python client core against the shared delivery vectors (tests/vectors/).

The JS SDK runs the same files (clients/js/test/vectors.test.mjs), so both
cores hold the same rules: inbox cursor dedup, buffering, gap pulls, and the
resume-or-resync decision after a login.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chatplane.delivery.sync import ConversationOrder, InboxCursor, resume_cursor

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def cases(name: str) -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return list(data["cases"])


@pytest.mark.parametrize("case", cases("inbox_cursor.json"), ids=lambda c: c["name"])
def test_inbox_cursor_vector(case: dict[str, Any]) -> None:
    cursor: InboxCursor[int] = InboxCursor(case["have"])
    for step in case["steps"]:
        delivered = cursor.accept(step["accept"], step["accept"])
        assert delivered == step["delivered"], step
        assert cursor.have == step["have"], step
        assert cursor.gap == step["gap"], step
    if "duplicates" in case:
        assert cursor.duplicates == case["duplicates"]


@pytest.mark.parametrize("case", cases("resume.json"), ids=lambda c: c["name"])
def test_resume_vector(case: dict[str, Any]) -> None:
    have, store = resume_cursor(case["have"], case["held_store"], case["ack_store"],
                                case["inbox_head"])
    assert have == case["have_after"]
    assert (have == 0 and case["have"] > 0) == case["resync"]
    assert store == case["store"]


@pytest.mark.parametrize("case", cases("conversation_order.json"), ids=lambda c: c["name"])
def test_conversation_order_vector(case: dict[str, Any]) -> None:
    order: ConversationOrder[int] = ConversationOrder()
    for step in case["steps"]:
        conv = step["conv"]
        if step["op"] == "offer":
            out = order.offer(conv, step["seq"], step["seq"], from_inbox=step["inbox"])
        elif step["op"] == "start":
            out = order.start(conv, step["before"])
        elif step["op"] == "head":
            order.saw_head(conv, step["head"])
            out = []
        else:
            out = order.pulled(conv, [(s, s) for s in step["seqs"]])
        assert out == step["delivered"], step
        assert order.wants == step["wants"], step
    if "duplicates" in case:
        assert order.duplicates == case["duplicates"]
