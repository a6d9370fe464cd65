"""Overlap a checkpoint write's three kinds of work: the kernel copying unchanged tensors, numpy
folding the changed ones, and the disk taking the data in.

``BlockPipeline`` produces the blocks of every computed tensor, in file order, in one worker thread,
at most ``depth`` blocks ahead of the writer (bounded memory), while the writer copies the tensors in
between. ``BackgroundFlush`` asks the disk to write what has been written so far (``fdatasync``)
from a second thread every ``every`` bytes, so the writeback runs while the bake still works
instead of all of it waiting for the final ``fsync`` (which the writer still does: the output is
durable before it is renamed into place). numpy and the system calls release the GIL, so on two
cores these really run at the same time.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

_END = object()
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class BlockPipeline:
    """The blocks of each of ``producers`` (called in order), made in a worker thread up to ``depth`` ahead."""

    def __init__(self, producers: Iterable[Callable[[], Iterable[np.ndarray]]], depth: int = 8):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(list(producers),), daemon=True,
                                        name="lambda-bake-fold")
        self._thread.start()

    def _run(self, producers: list[Callable[[], Iterable[np.ndarray]]]) -> None:
        try:
            for produce in producers:
                for block in produce():
                    if not self._put(block):
                        return
                if not self._put(_END):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the writer, which raises it
            self._put(_Failure(e))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def next_tensor(self) -> Iterator[np.ndarray]:
        """The blocks of the next producer, in order (raises what the producer raised)."""
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the worker (after its current block) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
        self._thread.join()

    def __enter__(self) -> BlockPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundFlush:
    """``fdatasync(fd)`` in a second thread each time ``every`` more bytes have been written."""

    def __init__(self, fd: int, every: int = 128 << 20):
        self._fd, self._every, self._pending = fd, every, 0
        self._wake = threading.Event()
        self._stop = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="lambda-bake-flush")
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                _datasync(self._fd)
            except OSError as e:  # raised by close(): a write error must not go unseen
                self._error = e
                return

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self._every:
            self._pending = 0
            self._wake.set()

    def close(self) -> None:
        """Stop the thread; raise any error its flushes met (the writer's own fsync follows)."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundFlush:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self.close()
        except OSError:
            if exc_type is None:  # an error already on its way (Ctrl-C, a full disk) is the one to report
                raise
