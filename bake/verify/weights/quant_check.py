"""The numeric core of the weight check for ``MatMulNBits``: how far each dequantized weight is from the bake's.

For a weight ``w`` quantized to ``code`` in a block with ``scale`` and ``zero_point``, the error in
quantization steps is ``|(code - zero_point) - w / scale|``; rounding to the nearest code keeps it
at most 1/2. A block whose scale is 0 dequantizes to 0, so its bake weights must be exactly 0 (an
error of inf otherwise, 0 where they are). A bake weight of exactly 0 has an error of ``|code - zero_point|``, an
integer, so the 1/2 bound also proves it comes back as exactly 0.

The weight is walked in chunks of rows small enough to stay in cache, in numpy (one thread): each
step is a few tens of microseconds, less than a thread hand-off costs on a loaded machine. The
bake's weight is widened to float32 one chunk at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bake.verify.weights.bake_tensors import Stored
from bake.verify.weights.nbits import unpack_codes

CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Worst:
    """The element furthest from the bake, in steps; index (row, col) in the [N, K] weight."""

    steps: float
    index: tuple[int, int] | None = None
    value: float = 0.0  # dequantized
    expected: float = 0.0  # the bake's weight
    scale: float = 0.0


def quant_error(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, w: Stored,
                bits: int, block_size: int, locate_above: float = 0.5) -> Worst:
    """The worst error of ``w`` [N, K] against MatMulNBits inputs B, scales [N, blocks] and zero points.

    The element is located (index, values) only when its error passes ``locate_above``.
    """
    n, k = w.shape
    blocks = scales.shape[1]
    rows = max(1, CHUNK_ELEMENTS // (blocks * block_size))
    codes = np.empty((min(rows, n), blocks, block_size), np.float32)
    err = np.empty(codes.shape, np.float32)
    worst = Worst(0.0)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        c = unpack_codes(b[r0:r1], bits, codes[: r1 - r0])
        if zero_points is not None:
            zero = unpack_codes(zero_points[r0:r1], bits)[:, :blocks]
        else:
            zero = np.full((r1 - r0, blocks), float(1 << (bits - 1)), np.float32)
        c -= zero[..., None]
        scale = scales[r0:r1].astype(np.float32)
        zero_scale = scale == 0
        inv = np.divide(1.0, scale, out=np.zeros_like(scale), where=~zero_scale)
        x = w.values(r0, r1)
        if blocks * block_size != k:
            x = np.pad(x, ((0, 0), (0, blocks * block_size - k)))
        x = x.reshape(r1 - r0, blocks, block_size)
        e = np.multiply(x, inv[..., None], out=err[: r1 - r0])
        np.subtract(c, e, out=e)
        if zero_scale.any():  # such a block dequantizes to 0 whatever its codes: right only where w is 0
            e[zero_scale] = np.where(x[zero_scale] == 0, 0.0, math.inf)
        top = max(-float(e.min()), float(e.max()))
        if not top <= worst.steps:  # larger, or NaN (the worst of all)
            worst = _locate(e, c, scale, x, r0, block_size) if not top <= locate_above else Worst(top)
    return worst


def _locate(e: np.ndarray, c: np.ndarray, scale: np.ndarray, x: np.ndarray, r0: int, bs: int) -> Worst:
    i, j, p = (int(v) for v in np.unravel_index(int(np.nan_to_num(np.abs(e), nan=math.inf).argmax()), e.shape))
    s = float(scale[i, j])
    steps = abs(float(e[i, j, p]))
    return Worst(math.inf if math.isnan(steps) else steps, (r0 + i, j * bs + p), float(c[i, j, p]) * s,
                 float(x[i, j, p]), s)
