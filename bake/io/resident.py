"""Let go of the resident pages of files another library memory-maps (Linux): ONNX Runtime maps each externally
stored initializer privately and keeps the maps of those it does not pre-pack, the embedding among them, whose every
page it read once while pre-packing the tied ``lm_head``: 622 MB of Qwen3-0.6B's float32 export held resident for
the rows a Gather reads now and then. Our own because no library exposes madvise on another library's mappings
(a map of our own is let go directly: ``mmap.madvise``, as ``bake.io.gguf_reader.drop_pages`` does)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path

MADV_DONTNEED = 4  # Linux <sys/mman.h>


def drop_file_pages(paths: Iterable[Path]) -> int:
    """Drop the resident pages of every mapping of ``paths`` in this process that holds none of its own (smaps
    ``Anonymous: 0 kB``: nothing was written through it, so each page is the file's and is read back from the page
    cache, unchanged, the next time it is touched). Returns the bytes let go; 0 where there is no /proc/self/smaps
    or no madvise (not Linux)."""
    targets = {os.path.realpath(p) for p in paths}
    try:
        smaps = Path("/proc/self/smaps").read_text()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    dropped = 0
    for start, stop, fields in _mappings(smaps, targets):
        if fields.get("Anonymous", 1) == 0 and fields.get("Rss", 0) > 0:
            if madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), MADV_DONTNEED) == 0:
                dropped += fields["Rss"] * 1024
    return dropped


def _mappings(smaps: str, targets: set[str]) -> Iterable[tuple[int, int, dict[str, int]]]:
    """The mappings of ``targets`` in an smaps text: start, end and the kB fields (Rss, Anonymous, ...)."""
    current: tuple[int, int, dict[str, int]] | None = None
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and head[0].endswith(":"):  # a field of the current mapping
            if current is not None and len(head) >= 2 and head[1].isdigit():
                current[2][head[0][:-1]] = int(head[1])
            continue
        if current is not None:
            yield current
        current = None
        if len(head) == 6 and head[5] in targets and "-" in head[0]:
            start, stop = (int(x, 16) for x in head[0].split("-"))
            current = (start, stop, {})
    if current is not None:
        yield current
