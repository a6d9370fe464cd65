"""Fold the gate scale into MLP weights: dense (scale columns) and pruned (drop neurons, pad).

``down_proj(h * s) == (W_down * s[None, :]) @ h``. Every function computes in float32 and rounds
once to the output dtype (``bake.io.dtypes``). ``s`` comes from ``bake.gates.gate_math``; nothing here
decides which neuron is off beyond ``s == 0``. Weights stream through in blocks of rows: each
function takes ``read(start, stop)``, which returns rows ``start:stop`` of the source tensor in its
raw element type, and yields the output's blocks of rows in order, so memory is one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from bake.io.dtypes import DType, convert, from_float32, to_float32
from bake.io.tensor_io import row_blocks

ReadRows = Callable[[int, int], np.ndarray]


def scale_columns(raw: np.ndarray, s: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """Column j of ``raw`` (elements of ``src``) times ``s_j`` in float32, rounded once to ``dst``."""
    w = to_float32(raw, src)
    with np.errstate(over="ignore", invalid="ignore"):  # IEEE results (inf, and NaN for inf * 0), as torch gives
        w *= s.astype(np.float32, copy=False)
    return from_float32(w, dst)


def fold_down_proj(read: ReadRows, shape: tuple[int, int], s: np.ndarray, src: DType, dst: DType
                   ) -> Iterator[np.ndarray]:
    """Dense fold: ``down_proj.weight`` [H, I] with column j times ``s_j``."""
    for start, stop in row_blocks(shape):
        yield scale_columns(read(start, stop), s, src, dst)


def prune_down_proj(read: ReadRows, shape: tuple[int, int], s: np.ndarray, keep: np.ndarray, width: int,
                    src: DType, dst: DType) -> Iterator[np.ndarray]:
    """down_proj [H, I] -> [H, width]: columns ``keep`` scaled by ``s``, then zero columns up to ``width``."""
    s_kept = s[keep]
    for start, stop in row_blocks(shape):
        out = np.zeros((stop - start, width), dtype=dst.storage)
        out[:, : keep.size] = scale_columns(read(start, stop)[:, keep], s_kept, src, dst)
        yield out


def prune_in_proj(read: ReadRows, shape: tuple[int, int], keep: np.ndarray, width: int, src: DType, dst: DType
                  ) -> Iterator[np.ndarray]:
    """gate_proj/up_proj [I, H] -> [width, H]: rows ``keep`` (ascending), then zero rows up to ``width``."""
    for start, stop in row_blocks(shape):
        lo, hi = np.searchsorted(keep, [start, stop])
        if hi > lo:
            yield convert(read(start, stop)[keep[lo:hi] - start], src, dst)
    for start, stop in row_blocks((width - keep.size, shape[1])):
        yield np.zeros((stop - start, shape[1]), dtype=dst.storage)


def convert_rows(read: ReadRows, shape: tuple[int, ...], src: DType, dst: DType) -> Iterator[np.ndarray]:
    """An unchanged tensor in another dtype (rounded once)."""
    for start, stop in row_blocks(shape):
        yield convert(read(start, stop), src, dst)


def gather(blocks: Iterable[np.ndarray], shape: tuple[int, ...], dtype: DType) -> np.ndarray:
    """The blocks of rows put together as one array of ``shape`` (for callers that want whole tensors)."""
    out = np.empty(shape, dtype=dtype.storage)
    row = 0
    for block in blocks:
        out[row: row + len(block)] = block
        row += len(block)
    if row != shape[0]:
        raise AssertionError(f"blocks hold {row} rows, expected {shape[0]}")
    return out


def kept_neurons(s: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the neurons of one layer whose scale is non-zero."""
    return np.flatnonzero(s != 0)
