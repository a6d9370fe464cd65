"""Which MLP neurons a ragged export keeps, and each layer's width: shared by the GGUF and MLX writers.

A neuron whose ``down_proj`` column is all zero adds exactly 0 to the output (the bake folded its scale, 0, into
that column), so a ragged export drops it. A quantized format needs each row to be a whole number of its blocks
(groups), so the kept width is rounded up with zero neurons; a layer with nothing left keeps one block of zeros
(llama.cpp asserts on a zero-width matmul; mlx-lm's openelm sizes an MLP at one neuron or more).
"""

from __future__ import annotations

import numpy as np


def live_neurons(down: np.ndarray) -> np.ndarray:
    """The indices of the neurons (columns of ``down``, [hidden, width]) that are not all zero, in order."""
    return np.flatnonzero((down != 0).any(axis=0))


def ragged_width(kept: int, granule: int) -> int:
    """``kept`` neurons rounded up to a whole number of ``granule``-neuron blocks, one block at least."""
    granule = max(int(granule), 1)
    return max(granule, -(-kept // granule) * granule)
