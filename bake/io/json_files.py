"""Read the small JSON files around a model (config, manifest, gate stats) with one kind of error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bake.errors import BakeError


def read_json(path: Path, error: type[BakeError], fix: str) -> Any:
    """Parse ``path``; an unreadable or invalid file raises ``error`` naming the file and ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); {fix}") from e
