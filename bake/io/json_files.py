"""Read the small JSON files around a model (config, manifest, gate stats) with one kind of error."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bake.errors import BakeError


def read_json(path: Path, error: type[BakeError], fix: str) -> Any:
    """Parse ``path``; an unreadable or invalid file raises ``error`` naming the file and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise error(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); {fix}") from e


def read_json_object(path: Path, error: type[BakeError], fix: str, what: str) -> dict[str, Any]:
    """``read_json`` of a file that must hold a JSON object (``what`` names it in the message)."""
    value = read_json(path, error, fix)
    if not isinstance(value, dict):
        raise error(f"{path} holds a JSON {type(value).__name__}, not {what}; {fix}")
    return value


def checked_field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, error: type[BakeError], fix: str,
          *, optional: bool = False, low: float | None = None, high: float | None = None) -> Any:
    """``obj[key]`` checked: of ``kind`` (never a bool for a number), within [low, high]; else ``error`` naming the
    file, the key and what was found."""
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise error(f"{path} lacks {key!r}; {fix}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    number = any(k in (int, float) for k in kinds)
    if not isinstance(value, kinds) or (number and isinstance(value, bool)) or (
            float in kinds and isinstance(value, float) and value != value):
        raise error(f"{path}: {key!r} is {value!r}, expected {' or '.join(k.__name__ for k in kinds)}; {fix}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise error(f"{path}: {key!r} is {value!r}, outside [{low}, {high}]; {fix}")
    return value


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has neither (Python's json writes the bare
    words NaN and Infinity, which no JSON parser reads)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
