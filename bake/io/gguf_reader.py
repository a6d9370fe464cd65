"""gguf-py's reader, bounded by the file's size, and parsed once per version of a file.

gguf-py trusts every count in the file: a damaged array length (one flipped bit in a string array's count) makes
it read past the end of the memory map, where numpy hands back empty slices, once per claimed element, so one
damaged byte becomes a loop that allocates until memory runs out. This reader refuses any read that ends past
the end of the file, so that such a file is a ``ValueError`` its callers name, in the time a good file takes.
"""

from __future__ import annotations

import mmap
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

from bake.errors import ExportError


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


def read_gguf(path: Path) -> Any:
    """gguf-py's reader over the file; a file it cannot parse is an ExportError naming it.

    Parsed once per version of the file (its inode, size and change times): verify's candidate, the weight proof
    and the dequantized model all read the same file, and parsing Qwen3's 151,936-token vocabulary takes 5 s."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        raise ExportError(f"{path} cannot be read as a GGUF file ({e})") from e
    return _parsed(str(path), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))


def drop_pages(reader: Any) -> None:
    """Let go of the file's pages read so far through ``reader``'s memory map: they stay in the page cache, but leave
    the process's resident memory (a pass over every tensor would otherwise end holding the whole file)."""
    mapped = getattr(reader.data, "_mmap", None)  # numpy.memmap's mmap.mmap
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)


def release_readers() -> None:
    """Forget every parsed file, so that its memory map closes (a removed file's disk space is then freed)."""
    _parsed.cache_clear()
    import gc

    gc.collect()


@lru_cache(maxsize=4)
def _parsed(path: str, version: tuple[int, ...]) -> Any:
    try:
        return open_gguf(path)
    except Exception as e:  # noqa: BLE001 - gguf-py raises ValueError, struct and index errors on a damaged file
        raise ExportError(f"{path} cannot be read as a GGUF file ({type(e).__name__}: {e}); it is damaged or "
                          "truncated: export (or download) it again") from e
