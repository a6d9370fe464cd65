"""drop_file_pages: a mapped file's clean pages leave the resident set and read back unchanged; a mapping with a
page of its own (written through a private map) is left alone."""

import mmap
import sys

import numpy as np
import pytest

from bake.io.resident import drop_file_pages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="madvise on /proc/self/smaps mappings: Linux only")

SIZE = 16 * 2**20


def rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_clean_private_mapping_is_dropped_and_reads_back(tmp_path):
    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as f:  # private and writable, as ONNX Runtime maps its external initializers
        mapped = mmap.mmap(f.fileno(), SIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = np.frombuffer(mapped, np.uint8)
    assert int(view.astype(np.int64).sum()) == int(data.astype(np.int64).sum())  # every page touched
    before = rss_file_kb()
    dropped = drop_file_pages([path, tmp_path / "not-mapped.bin"])
    assert dropped >= SIZE * 0.9
    assert before - rss_file_kb() >= SIZE * 0.9 / 1024
    assert np.array_equal(view, data)  # read back from the page cache
    del view
    mapped.close()


def test_mapping_with_a_written_page_is_kept(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(SIZE))
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), SIZE, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = np.frombuffer(mapped, np.uint8)
    view.sum()
    mapped[123] = 7  # a copy-on-write page: only this mapping holds it
    assert drop_file_pages([path]) == 0
    assert mapped[123] == 7 and path.read_bytes()[123] == 0
    del view
    mapped.close()
