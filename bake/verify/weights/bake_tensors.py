"""A bake as a set of named tensors: a baked folder on disk, or the bake a manifest describes, rebuilt in memory.

The weight check compares an ONNX export with one of these. Tensors are numpy arrays of their raw
storage type, as everywhere in the bake (``bake.io.dtypes``: bfloat16 as uint16), with their dtype.
A folder is read with the ``safetensors`` library itself (not ``bake.io.tensor_io``, the reader the
exporter reads the bake with), one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy reader needs; onnx requires it)
import numpy as np
from safetensors import safe_open

from bake.errors import BaseModelError
from bake.fold.plan import BakePlan
from bake.fold.weights import gather
from bake.io.base_model import read_config
from bake.io.dtypes import BY_NAME, DType, to_float32
from bake.io.json_files import read_json
from bake.io.tensor_io import INDEX_NAME, SINGLE_NAME, read_rows


@dataclass(frozen=True)
class Stored:
    """One bake tensor (or a selection of it) as stored: raw elements of ``dtype``'s numpy storage."""

    raw: np.ndarray
    dtype: DType

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)

    def values(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` as a new float32 array (exact: every dtype a bake holds widens exactly)."""
        rows = self.raw[start:stop]
        return to_float32(rows, self.dtype) if self.dtype.computable else rows.astype(np.float32)

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
        self._where: dict[str, Any] = {}
        for name in files:
            handle = safe_open(str(self.folder / name), framework="np")
            self._where.update({key: handle for key in handle.keys()})

    def names(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> Stored:
        a = self._where[name].get_tensor(name)
        dtype = BY_NAME[a.dtype.name]
        return Stored(a.view(dtype.storage), dtype)


class PlannedBake:
    """The bake a plan describes (``bake.fold.plan.plan_bake``), produced tensor by tensor, never written."""

    def __init__(self, plan: BakePlan, label: str):
        self.label = label
        self.config = dict(plan.base.config) | {"intermediate_size": plan.width}
        self._tensors = {t.name: t for t in plan.tensors()}

    def names(self) -> list[str]:
        return list(self._tensors)

    def tensor(self, name: str) -> Stored:
        t = self._tensors[name]
        raw = read_rows(t.copy_from) if t.produce is None else gather(t.produce(), t.shape, t.dtype)
        return Stored(raw, t.dtype)
