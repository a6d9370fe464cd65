"""Where each weight of an ONNX export comes from in the bake: names, packing and neuron selection.

The export names its initializers after the bake's tensors. A projection ``P`` is stored as
``P.weight`` (float) or ``P.weight.quant/.scales/.zero_points`` (MatMulNBits); ``P`` is a bake
projection prefix, or one of the packed forms of the ONNX Runtime graph:

- ``model.layers.{i}.self_attn.qkv_proj``: the q, k and v rows stacked, in that order;
- ``model.layers.{i}.mlp.gate_up_proj``: gate rows, then up rows, of the same neurons;
- ``lm_head``: ``lm_head.weight``, or the embedding when the config ties them.

A ragged export keeps, per layer, the neurons whose ``down_proj`` column in the bake is not all
zero, in ascending order: their gate/up rows and down columns.
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
    """A bake tensor, or some of its rows (``rows``) or input columns (``cols``), as one block of rows."""

    name: str
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None

    def select(self, t: np.ndarray) -> np.ndarray:
        if self.rows is not None:
            t = np.take(t, self.rows, axis=0)
        if self.cols is not None:
            t = np.take(t, self.cols, axis=1)
        return t

    def bake_index(self, row: int, col: int | None) -> list[int]:
        """The bake tensor's index of this part's element (row, col); col None for a vector."""
        r = int(self.rows[row]) if self.rows is not None else row
        if col is None:
            return [r]
        return [r, int(self.cols[col]) if self.cols is not None else col]


def projection_parts(prefix: str, suffix: str, tied: bool,
                     keep: Callable[[int], np.ndarray | None]) -> list[Part] | None:
    """The bake tensors (``{bake prefix}.{suffix}``) an export projection stacks; None if ``prefix`` is none.

    ``keep(layer)`` gives the neurons a layer keeps (None: all of them).
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
    neurons = keep(layer)
    if proj == "gate_up_proj":
        return [Part(f"{base}.gate_proj.{suffix}", rows=neurons), Part(f"{base}.up_proj.{suffix}", rows=neurons)]
    if proj in ("gate_proj", "up_proj"):
        return [Part(f"{prefix}.{suffix}", rows=neurons)]
    if proj == "down_proj":
        return [Part(f"{prefix}.{suffix}", cols=neurons)]
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
