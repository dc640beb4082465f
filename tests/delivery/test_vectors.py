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

from chatplane.delivery.sync import InboxCursor, resume_cursor

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
