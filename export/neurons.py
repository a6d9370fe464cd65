"""Which MLP neurons a ragged export keeps, and each layer's width: shared by the GGUF and MLX writers.

A neuron whose ``down_proj`` column is all zero adds exactly 0 to the output (the bake folded its scale, 0, into
that column), so a ragged export drops it. A quantized format needs each row to be a whole number of its blocks
(groups), so the kept width is rounded up with zero neurons; a layer with nothing left keeps one block of zeros
(llama.cpp asserts on a zero-width matmul; mlx-lm's openelm sizes an MLP at one neuron or more).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bake.gates.widths import ragged_width
from bake.io.dtypes import to_float32


def live_neurons(down: np.ndarray) -> np.ndarray:
    """The indices of the neurons (columns of ``down``, [hidden, width]) that are not all zero, in order."""
    return np.flatnonzero((down != 0).any(axis=0))


def bake_values(reader: Any, name: str) -> np.ndarray:
    """A bake tensor (``bake.io.tensor_io.CheckpointReader``) in float32, exactly."""
    info = reader.tensors[name]
    raw = reader.rows(name)
    return to_float32(raw, info.dtype) if info.dtype.computable else raw.astype(np.float32)


@dataclass
class LayerWidths:
    """Each layer's kept neurons (None: all of them), kept count and exported width."""

    keep: list[np.ndarray | None] = field(default_factory=list)
    kept_counts: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, reader: Any, layers: int, ragged: bool, granule: int) -> LayerWidths:
        """Ragged: the live neurons of each layer's ``down_proj``, rounded up to ``granule``; else the bake's width."""
        out = cls()
        for i in range(layers):
            name = f"model.layers.{i}.mlp.down_proj.weight"
            if ragged:
                live = live_neurons(bake_values(reader, name))
                out.keep.append(live)
                out.kept_counts.append(int(live.size))
                out.widths.append(ragged_width(live.size, granule))
            else:
                width = int(reader.tensors[name].shape[1])
                out.keep.append(None)
                out.kept_counts.append(width)
                out.widths.append(width)
        return out

    def rows(self, i: int, w: np.ndarray) -> np.ndarray:
        """gate/up ``w`` [width, hidden] of layer ``i``: the kept neurons' rows, then zero rows up to its width."""
        keep = self.keep[i]
        if keep is None:
            return w
        out = np.zeros((self.widths[i], w.shape[1]), np.float32)
        out[:keep.size] = w[keep]
        return out

    def columns(self, i: int, w: np.ndarray) -> np.ndarray:
        """down ``w`` [hidden, width] of layer ``i``: the kept neurons' columns, then zero columns up to its width."""
        keep = self.keep[i]
        if keep is None:
            return w
        out = np.zeros((w.shape[0], self.widths[i]), np.float32)
        out[:, :keep.size] = w[:, keep]
        return out
