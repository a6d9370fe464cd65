"""A bake as a set of named tensors: a baked folder on disk, or the bake a base, a scale and a layout define.

The weight checks compare a checkpoint or an ONNX export with one of these. Tensors are numpy arrays of their raw
storage type, as everywhere in the bake (``bake.io.dtypes``: bfloat16 as uint16), with their dtype.
A folder is read with the ``safetensors`` library itself (not ``bake.io.tensor_io``, the reader the
exporter reads the bake with), one tensor at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ml_dtypes  # bfloat16 in numpy: safetensors' numpy reader needs it registered, and DerivedBake rounds with it
import numpy as np
from safetensors import safe_open

from bake.errors import BaseModelError
from bake.io.base_model import read_config
from bake.io.dtypes import BY_NAME, DType, to_float32
from bake.io.json_files import read_json
from bake.io.tensor_io import INDEX_NAME, SINGLE_NAME


@dataclass(frozen=True)
class Stored:
    """One bake tensor (or a selection of it) as stored: raw elements of ``dtype``'s numpy storage."""

    raw: np.ndarray
    dtype: DType

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)

    def values(self, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop`` as float32 (exact: every dtype a bake holds widens exactly): a new array, or ``out``."""
        rows = self.raw[start:stop]
        if self.dtype.computable:
            return to_float32(rows, self.dtype, out)
        if out is None:
            return rows.astype(np.float32)
        np.copyto(out, rows, casting="unsafe")
        return out

    @classmethod
    def of(cls, a: np.ndarray) -> Stored:
        """A float32 or float16 array as a stored tensor."""
        return cls(a, BY_NAME[a.dtype.name])


class BakeTensors(Protocol):
    """What the weight check reads of a bake."""

    label: str
    config: dict[str, Any]

    def names(self) -> list[str]:
        """Every tensor name of the bake."""

    def tensor(self, name: str) -> Stored:
        """One tensor in the bake's own dtype."""


class BakeFolder:
    """A baked checkpoint folder (one safetensors file or shards with an index)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.label = str(self.folder)
        self.config = read_config(self.folder)
        index = self.folder / INDEX_NAME
        if index.is_file():
            files = sorted(set(read_json(index, BaseModelError, "bake again")["weight_map"].values()))
        elif (self.folder / SINGLE_NAME).is_file():
            files = [SINGLE_NAME]
        else:
            raise BaseModelError(f"{self.folder} holds no {SINGLE_NAME} or {INDEX_NAME}; give --baked a baked folder")
        self._where: dict[str, str] = {}
        for name in files:
            with safe_open(str(self.folder / name), framework="np") as handle:
                self._where.update({key: str(self.folder / name) for key in handle.keys()})

    def names(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> Stored:
        # A handle per read: a handle memory-maps its file, and every page read through it stays in the process's
        # resident memory until the handle closes (kept open, the whole model by the end of a pass: 8 GB at 4B).
        with safe_open(self._where[name], framework="np") as handle:
            a = handle.get_tensor(name)
        dtype = BY_NAME[a.dtype.name]
        return Stored(a.view(dtype.storage), dtype)


class DerivedBake:
    """The bake a base, a scale and a layout define, derived here from SPEC.md's formulas by code the bake does
    not run: the base is read with the ``safetensors`` library, ``down_proj`` columns are ``W * s`` in float32
    rounded with ``ml_dtypes``' own conversion (the bake rounds with bit arithmetic, ``bake.io.dtypes``), the
    pruned layout keeps the neurons whose scale is nonzero, in order, then zeros up to ``width``. Only the
    scale comes from the gate math, its one source of truth. The ragged layout gives each layer its kept neurons
    rounded up to ``pad_multiple`` (one block of zeros at least); the pruned one every layer ``width``.
    """

    def __init__(self, base: Path, scale: np.ndarray, *, layout: str, dtype: str, width: int | None = None,
                 pad_multiple: int | None = None, label: str | None = None):
        self.base = BakeFolder(base)
        self.scale = np.asarray(scale, np.float32)
        self.layout, self.dtype = layout, BY_NAME[dtype]
        dense = int(self.base.config["intermediate_size"])
        if layout == "ragged":
            m = int(pad_multiple or 1)
            self.widths = [-(-max(int((row != 0).sum()), 1) // m) * m for row in self.scale]
        else:
            self.widths = [dense if width is None else int(width)] * self.scale.shape[0]
        self.width = max(self.widths)
        self.config = dict(self.base.config) | {"intermediate_size": self.width}
        if len(set(self.widths)) > 1:  # transformers' per_layer_config: the layers that differ from the widest
            self.config["per_layer_config"] = {str(i): {"intermediate_size": w} for i, w in enumerate(self.widths)
                                               if w != self.width}
        self.label = label or f"the bake derived from {base} and the gates ({layout}, {dtype})"

    def names(self) -> list[str]:
        return self.base.names()

    def tensor(self, name: str) -> Stored:
        t = self.base.tensor(name)
        m = _MLP.match(name)
        if m is None:
            return t if t.dtype == self.dtype or not t.dtype.floating else Stored(_rounded(t.values(), self.dtype),
                                                                                    self.dtype)
        layer, proj = int(m.group(1)), m.group(2)
        s = self.scale[layer]
        keep = np.flatnonzero(s != 0) if self.layout != "dense" else np.arange(s.size)
        w = t.values()
        extra = max(self.widths[layer] - keep.size, 0)  # a width too small for the cut: the shape check will say so
        if proj == "down_proj":
            w = w[:, keep] * s[keep][None, :]
            pad = ((0, 0), (0, extra))
        else:
            w = w[keep]
            pad = ((0, extra), (0, 0))
        return Stored(_rounded(np.pad(w, pad), self.dtype), self.dtype)


_MLP = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")
_ROUNDED = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _rounded(x: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 ``x`` rounded to ``dtype`` (nearest, ties to even) and viewed as its raw storage."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(x.astype(_ROUNDED[dtype.name])).view(dtype.storage)


def config_widths(config: dict[str, Any]) -> list[int]:
    """Each layer's MLP width as the config gives it, read here from the JSON: verify's own reading, not the
    loader's and exporters' (``bake.io.base_model.layer_widths``, which the checks are there to catch out)."""
    widths = [int(config["intermediate_size"])] * int(config["num_hidden_layers"])
    for key, entry in (config.get("per_layer_config") or {}).items():
        widths[int(key)] = int(entry["intermediate_size"])
    return widths
