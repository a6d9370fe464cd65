"""The write pipeline's threads: order, errors and shutdown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import bake.io.overlap as overlap
from bake.io.overlap import BackgroundFlush, BlockPipeline


def blocks(tag: int, n: int) -> Iterator[np.ndarray]:
    for i in range(n):
        yield np.full(3, tag * 100 + i)


def test_blocks_come_in_producer_order() -> None:
    counts = [3, 0, 20, 1]
    with BlockPipeline([lambda t=t, n=n: blocks(t, n) for t, n in enumerate(counts)], depth=2) as p:
        got = [[int(b[0]) for b in p.next_tensor()] for _ in counts]
    assert got == [[t * 100 + i for i in range(n)] for t, n in enumerate(counts)]


def test_a_producer_error_reaches_the_writer_at_its_tensor() -> None:
    def broken() -> Iterator[np.ndarray]:
        yield np.zeros(1)
        raise OSError("disk read failed")

    with BlockPipeline([lambda: blocks(0, 2), broken]) as p:
        assert len(list(p.next_tensor())) == 2
        with pytest.raises(OSError, match="disk read failed"):
            list(p.next_tensor())


def test_closing_early_stops_a_producer_that_is_ahead() -> None:
    before = threading.active_count()
    start = time.monotonic()
    with BlockPipeline([lambda: blocks(0, 10_000)], depth=4) as p:
        next(p.next_tensor())
    assert time.monotonic() - start < 5 and threading.active_count() == before


def test_flush_runs_behind_the_writer_every_n_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(overlap, "_datasync", calls.append)
    with open(tmp_path / "f", "wb") as f, BackgroundFlush(f.fileno(), every=100) as flush:
        fd = f.fileno()
        for _ in range(5):
            flush.wrote(60)  # crosses 100 at the 2nd and 4th call
            time.sleep(0.05)
    assert calls == [fd, fd]


def test_a_failed_flush_is_raised_unless_another_error_is_on_its_way(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    os.close(fd)  # flushing a closed descriptor fails with EBADF
    with pytest.raises(OSError), BackgroundFlush(fd, every=1) as flush:
        flush.wrote(1)
        time.sleep(0.1)
    with pytest.raises(KeyboardInterrupt), BackgroundFlush(fd, every=1) as flush:
        flush.wrote(1)
        time.sleep(0.1)
        raise KeyboardInterrupt
