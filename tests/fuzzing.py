"""Mutations for the readers' fuzz tests: byte-level damage (what a broken download does) and JSON-level edits
(what a hand-edited or half-written file does). Seeded and bounded through hypothesis' settings below."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Seeded (the same examples every run, so CI is repeatable), a bound per example, and no shrinking time wasted on
# the slow health checks of file-writing tests.
FUZZ = settings(derandomize=True, deadline=3000, max_examples=120, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@st.composite
def damaged(draw: Any, data: bytes) -> bytes:
    """``data`` after one to four of: a truncation, bit flips, byte rewrites, a splice of one part over another."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "rewrite", "splice"]))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "rewrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            out[at:at + len(chunk)] = chunk
        else:
            src = draw(st.integers(0, len(out) - 1))
            length = draw(st.integers(1, 64))
            out[at:at + length] = out[src:src + length]
    return bytes(out)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):
            found += _paths(v, prefix + (i,))
    return found


@st.composite
def edited_json(draw: Any, data: Any) -> str:
    """``data`` (parsed JSON) with one to three values replaced by any JSON value, or deleted."""
    value = json.loads(json.dumps(data))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(value)))
        new = draw(JSON_VALUES)
        if not path:
            value = new
            continue
        parent = value
        try:
            for key in path[:-1]:
                parent = parent[key]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = new
        except (KeyError, IndexError, TypeError):  # an earlier edit changed the shape above this path
            continue
    return json.dumps(value, allow_nan=True)
