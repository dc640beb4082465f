"""Bounds on the JSON bodies of the admin API and the drain call.

JSON is looser than protobuf: a number may be a bool (`true` is an int in
Python), a float where an integer is meant, NaN or Infinity (Python's json
reads them), or as large as the text allows; and a body may nest deeper than
the parser's recursion. Each reader here takes one key of a parsed body and
either returns a value of the right type within its bounds or raises a
`BoundsError` naming the key ("field ttl_s: an integer in 1 .. 2592000,
not true"), which the HTTP handlers answer with 400. The bounds themselves
are the constants of `protocol/bounds.py` and the ones below; docs/admin-api.md
lists them. No I/O: the handlers pass the body's text in.
"""

from __future__ import annotations

import json
import math
from typing import Any

from chatplane.protocol.bounds import MAX_ID_BYTES, MAX_USERS_PER_OP, BoundsError
from chatplane.protocol.records import ID_PATTERN, valid_id

MAX_TTL_S = 30 * 86400  # a token's lifetime
MAX_DISPLAY_NAME_CHARS = 128
MAX_DRAIN_RATE = 100_000.0  # connections told to reconnect per second
MAX_DRAIN_DEADLINE_S = 86_400.0

_MISSING = object()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_object(text: str) -> dict[str, Any]:
    """A request body that must be a JSON object (NaN and Infinity refused)."""
    if not text.strip():
        return {}
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BoundsError("body", f"not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise BoundsError("body", "must be a JSON object")
    return body


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer(body: dict[str, Any], key: str, low: int, high: int, default: Any = _MISSING) -> int:
    """An integer (not a bool, not a float) in low .. high."""
    value = body.get(key, default)
    if value is _MISSING:
        raise BoundsError(key, "missing")
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BoundsError(key, f"an integer in {low} .. {high}, not {_show(value)}")
    return value


def number(body: dict[str, Any], key: str, high: float, default: float) -> float:
    """A finite number (not a bool, not a string) above 0 and at most `high`."""
    value = body.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 < value <= high):
        raise BoundsError(key, f"a number above 0 and at most {high:g}, not {_show(value)}")
    return float(value)


def string(body: dict[str, Any], key: str, max_chars: int, default: Any = _MISSING) -> str:
    value = body.get(key, default)
    if value is _MISSING:
        raise BoundsError(key, "missing")
    if not isinstance(value, str) or len(value) > max_chars:
        raise BoundsError(key, f"a string of at most {max_chars} characters")
    return value


def user_id(body: dict[str, Any], key: str, default: Any = _MISSING) -> str:
    value = body.get(key, default)
    if value is _MISSING:
        raise BoundsError(key, "missing")
    if not isinstance(value, str) or not valid_id(value):
        raise BoundsError(key, f"1-{MAX_ID_BYTES} of A-Z a-z 0-9 _ . @ - ({ID_PATTERN.pattern})")
    return value


def user_ids(body: dict[str, Any], key: str) -> list[str]:
    """A list of at most MAX_USERS_PER_OP user ids (absent: empty)."""
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_USERS_PER_OP:
        raise BoundsError(key, f"a list of at most {MAX_USERS_PER_OP} user ids")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not valid_id(item):
            raise BoundsError(f"{key}[{i}]", f"not a user id ({ID_PATTERN.pattern})")
    return value
