"""gguf-py's reader, bounded by the file's size.

gguf-py trusts every count in the file: a damaged array length (one flipped bit in a string array's count) makes
it read past the end of the memory map, where numpy hands back empty slices, once per claimed element, so one
damaged byte becomes a loop that allocates until memory runs out. This reader refuses any read that ends past
the end of the file, so that such a file is a ``ValueError`` its callers name, in the time a good file takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader


class BoundedGGUFReader(GGUFReader):
    """``gguf.GGUFReader`` that raises ``ValueError`` on a read past the end of the file."""

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        count, itemsize = int(count), int(np.dtype(dtype).itemsize)
        if offset < 0 or count < 0 or offset + itemsize * count > len(self.data):
            raise ValueError(f"{count} values of {itemsize} bytes at byte {offset} run past the end of the file "
                             f"({len(self.data)} bytes): a count in the file is damaged")
        return super()._get(offset, dtype, count, override_order)


def open_gguf(path: Path | str) -> GGUFReader:
    """Read ``path`` (metadata and tensor index; tensor data stays memory-mapped)."""
    return BoundedGGUFReader(str(path))
