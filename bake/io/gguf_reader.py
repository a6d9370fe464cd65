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


# GGUF value types (gguf-py's GGUFValueType): struct formats of the scalars; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def read_gguf_metadata(path: Path | str, keys: set[str]) -> dict[str, Any]:
    """The values of ``keys`` (scalars and strings) from a GGUF file's metadata, read without parsing the rest.

    Our own scan rather than gguf-py's reader: that one decodes every field and the tensor index (Qwen3's
    151,936-token vocabulary takes seconds per file), where a card needs three values. Arrays are stepped over,
    never decoded. Every read is bounded by the file's size: a damaged count is a ``ValueError``, as in
    ``BoundedGGUFReader``."""
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size = len(data)

        def unpack(fmt: str, offset: int) -> tuple[Any, int]:
            width = struct.calcsize(fmt)
            if offset + width > size:
                raise ValueError(f"a value at byte {offset} runs past the end of the file ({size} bytes)")
            return struct.unpack_from(fmt, data, offset)[0], offset + width

        def string(offset: int) -> tuple[bytes, int]:
            length, offset = unpack("<Q", offset)
            if offset + length > size:
                raise ValueError(f"a string of {length} bytes at byte {offset} runs past the end of the file "
                                 f"({size} bytes): a count in the file is damaged")
            return data[offset:offset + length], offset + length

        def skip(kind: int, offset: int) -> int:
            if kind in _SCALARS:
                return unpack(_SCALARS[kind], offset)[1]
            if kind == _STRING:
                return string(offset)[1]
            if kind == _ARRAY:
                inner, offset = unpack("<I", offset)
                count, offset = unpack("<Q", offset)
                if inner in _SCALARS:
                    end = offset + struct.calcsize(_SCALARS[inner]) * count
                    if end > size:
                        raise ValueError(f"an array of {count} values at byte {offset} runs past the end of the file")
                    return end
                for _ in range(count):
                    offset = skip(inner, offset)
                return offset
            raise ValueError(f"unknown GGUF value type {kind} at byte {offset}")

        if data[:4] != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        version, offset = unpack("<I", 4)
        if version < 2:
            raise ValueError(f"GGUF version {version} is older than llama.cpp reads")
        _, offset = unpack("<Q", offset)  # tensor count
        kv_count, offset = unpack("<Q", offset)
        found: dict[str, Any] = {}
        for _ in range(kv_count):
            raw_key, offset = string(offset)
            kind, offset = unpack("<I", offset)
            key = raw_key.decode("utf-8", errors="replace")
            if key in keys and kind in _SCALARS:
                found[key], offset = unpack(_SCALARS[kind], offset)
            elif key in keys and kind == _STRING:
                raw, offset = string(offset)
                found[key] = raw.decode("utf-8")
            else:
                offset = skip(kind, offset)
            if len(found) == len(keys):
                break
        return found
