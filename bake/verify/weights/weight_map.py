"""Where each weight of an ONNX export comes from in the bake: names, packing and neuron selection.

The export names its initializers after the bake's tensors. A projection ``P`` is stored as
``P.weight`` (float) or ``P.weight.quant/.scales/.zero_points`` (MatMulNBits); ``P`` is a bake
projection prefix, or one of the packed forms of the ONNX Runtime graph:

- ``model.layers.{i}.self_attn.qkv_proj``: the q, k and v rows stacked, in that order;
- ``model.layers.{i}.mlp.gate_up_proj``: gate rows, then up rows, of the same neurons;
- ``lm_head``: ``lm_head.weight``, or the embedding when the config ties them.

A ragged export keeps, per layer, the neurons whose ``down_proj`` column in the bake is not all
zero, in ascending order: their gate/up rows and down columns. An export with a width multiple
(``onnx_io.json``'s ``width_multiple``; 64 for the cuda target) then adds zero neurons up to the next
multiple: zero gate/up rows, zero down columns.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

EMBED = "model.embed_tokens.weight"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)$")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Part:
    """A bake tensor, or some of its rows (``rows``) or input columns (``cols``), then ``pad_rows`` zero rows or
    ``pad_cols`` zero columns (an export's alignment neurons), as one block of rows."""

    name: str
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    pad_rows: int = 0
    pad_cols: int = 0

    def select(self, t: np.ndarray) -> np.ndarray:
        if self.rows is not None:
            t = np.take(t, self.rows, axis=0)
        if self.cols is not None:
            t = np.take(t, self.cols, axis=1)
        if self.pad_rows:
            t = np.pad(t, ((0, self.pad_rows),) + ((0, 0),) * (t.ndim - 1))
        if self.pad_cols and t.ndim == 2:
            t = np.pad(t, ((0, 0), (0, self.pad_cols)))
        return t

    def is_padding(self, row: int, col: int | None, shape: tuple[int, ...]) -> bool:
        """Whether element (row, col) of this part (``shape``: as selected and padded) is an alignment zero."""
        return row >= shape[0] - self.pad_rows or (col is not None and col >= shape[-1] - self.pad_cols)

    def where(self, row: int, col: int | None, shape: tuple[int, ...]) -> str:
        """The bake element behind element (row, col) of this part, e.g. ``P.weight[3, 7]`` (col None: a vector),
        or the alignment neuron it is."""
        if self.is_padding(row, col, shape):
            return f"a zero neuron added to {self.name} for alignment (it must be exactly 0)"
        return f"{self.name}{self.bake_index(row, col)}"

    def bake_index(self, row: int, col: int | None) -> list[int]:
        """The bake tensor's index of this part's element (row, col); col None for a vector."""
        r = int(self.rows[row]) if self.rows is not None else row
        if col is None:
            return [r]
        return [r, int(self.cols[col]) if self.cols is not None else col]


Neurons = Callable[[int], tuple[np.ndarray | None, int]]  # layer -> (the bake neurons it keeps or None: all, zeros)


def projection_parts(prefix: str, suffix: str, tied: bool, neurons: Neurons) -> list[Part] | None:
    """The bake tensors (``{bake prefix}.{suffix}``) an export projection stacks; None if ``prefix`` is none.

    ``neurons(layer)`` gives the neurons a layer keeps (None: all of them) and the zero neurons added after them.
    """
    if prefix == "lm_head":
        return [Part(EMBED if tied else f"lm_head.{suffix}")]
    m = _LAYER.match(prefix)
    if m is None:
        return None
    layer, block, proj = int(m.group(1)), m.group(2), m.group(3)
    base = f"model.layers.{layer}.{block}"
    if block == "self_attn":
        if proj == "qkv_proj":
            return [Part(f"{base}.{p}_proj.{suffix}") for p in "qkv"]
        return [Part(f"{prefix}.{suffix}")] if proj in _ATTN else None
    keep, pad = neurons(layer)
    if proj == "gate_up_proj":
        return [Part(f"{base}.{p}.{suffix}", rows=keep, pad_rows=pad) for p in ("gate_proj", "up_proj")]
    if proj in ("gate_proj", "up_proj"):
        return [Part(f"{prefix}.{suffix}", rows=keep, pad_rows=pad)]
    if proj == "down_proj":
        return [Part(f"{prefix}.{suffix}", cols=keep, pad_cols=pad)]
    return None


class LiveNeurons:
    """Per layer of a bake (``bake.verify.weights.bake_tensors``), the neurons a ragged export keeps: ascending
    indices of the columns of its ``down_proj`` with a nonzero entry, each layer read once."""

    def __init__(self, bake: Any):
        self.bake = bake
        self.kept: dict[int, np.ndarray] = {}

    def __call__(self, layer: int) -> np.ndarray:
        if layer not in self.kept:
            down = self.bake.tensor(f"model.layers.{layer}.mlp.down_proj.weight").values()
            self.kept[layer] = np.flatnonzero((down != 0).any(axis=0))
        return self.kept[layer]
