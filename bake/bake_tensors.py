"""A bake as a set of named tensors: a baked folder on disk, or the bake a manifest describes, rebuilt in memory.

The weight check compares an ONNX export with one of these. A folder is read with the
``safetensors`` library itself (not the exporter's reader), one tensor at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from .base_model import read_config
from .errors import BaseModelError
from .json_files import read_json
from .pipeline import BakePlan
from .tensor_io import INDEX_NAME, SINGLE_NAME


class BakeTensors(Protocol):
    """What the weight check reads of a bake."""

    label: str
    config: dict[str, Any]

    def names(self) -> list[str]:
        """Every tensor name of the bake."""

    def tensor(self, name: str) -> torch.Tensor:
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
            handle = safe_open(str(self.folder / name), framework="pt")
            self._where.update({key: handle for key in handle.keys()})

    def names(self) -> list[str]:
        return list(self._where)

    def tensor(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)


class PlannedBake:
    """The bake a plan describes (``bake.pipeline.plan_bake``), produced tensor by tensor, never written."""

    def __init__(self, plan: BakePlan, label: str):
        self.label = label
        self.config = dict(plan.base.config) | {"intermediate_size": plan.width}
        self._tensors = {t.name: t for t in plan.tensors()}
        self._reader = plan.base.reader

    def names(self) -> list[str]:
        return list(self._tensors)

    def tensor(self, name: str) -> torch.Tensor:
        t = self._tensors[name]
        out = self._reader.tensor(name) if t.produce is None else t.produce()
        assert isinstance(out, torch.Tensor), f"the plan produces {name} as bytes"
        return out
